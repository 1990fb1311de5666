//! The raw `bpf(2)` calls aya does not make for the agent, and the few
//! hand-written programs it loads with them (aya cannot relocate kfunc
//! calls: see [`crate::ct_lookup`]).

use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// Runs `bpf(cmd, attr)`; `attr` is the `union bpf_attr` member `cmd`
/// takes, padded as the kernel expects.
pub fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<i64> {
    // SAFETY: `attr` points to `size_of::<A>()` bytes of a bpf_attr member,
    // which the kernel may write back into.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut A).cast::<u8>(),
            size_of::<A>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// Runs a `bpf(2)` command that returns a new descriptor.
pub fn bpf_fd<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// One instruction: `dst` and `src` are register numbers.
pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | src << 4,
        off,
        imm,
    }
}

impl Insn {
    /// The instruction as it sits in an object file (little-endian).
    pub fn to_bytes(self) -> [u8; 8] {
        let [o0, o1] = self.off.to_le_bytes();
        let [i0, i1, i2, i3] = self.imm.to_le_bytes();
        [self.code, self.regs, o0, o1, i0, i1, i2, i3]
    }
}

/// The opcodes the hand-written programs use.
pub const MOV_REG: u8 = 0xbf;
pub const MOV_IMM: u8 = 0xb7;
pub const ADD_IMM: u8 = 0x07;
pub const LOAD_W: u8 = 0x61;
pub const LOAD_B: u8 = 0x71;
pub const STORE_REG_DW: u8 = 0x7b;
pub const STORE_W: u8 = 0x62;
pub const STORE_DW: u8 = 0x7a;
pub const STORE_B: u8 = 0x72;
pub const JGT_REG: u8 = 0x2d;
pub const JGT_IMM: u8 = 0x25;
pub const JLT_IMM: u8 = 0xa5;
pub const JEQ_IMM: u8 = 0x15;
pub const CALL: u8 = 0x85;
pub const EXIT: u8 = 0x95;
/// `BPF_PSEUDO_KFUNC_CALL`: a call's `imm` is a BTF function id.
pub const KFUNC: u8 = 2;
/// The frame pointer, r10.
pub const FP: u8 = 10;
/// `BPF_PSEUDO_MAP_FD`: a 64-bit immediate load's `imm` is a map's descriptor.
#[cfg(test)]
const MAP_FD: u8 = 1;
/// `BPF_JMP | BPF_JEQ | BPF_X`.
#[cfg(test)]
const JEQ_REG: u8 = 0x1d;
/// `BPF_LD | BPF_DW | BPF_IMM`: a 64-bit immediate, over two instructions.
#[cfg(test)]
const LOAD_IMM64: u8 = 0x18;

/// The `prog_load` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    core_relo_cnt: u32,
    fd_array: u64,
    core_relos: u64,
    core_relo_rec_size: u32,
    log_true_size: u32,
}

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct bpf_btf_info`.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

/// Loads `insns` as an XDP program named `name` (GPL: kfuncs need it),
/// with `fd_array` for the BTF objects its kfunc calls name; on failure
/// the error and the verifier's log.
pub fn load_xdp(
    insns: &[Insn],
    name: &std::ffi::CStr,
    fd_array: Option<&[i32; 2]>,
) -> Result<OwnedFd, (std::io::Error, String)> {
    let mut prog_name = [0u8; 16];
    let name = name.to_bytes();
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name[..n]);
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        fd_array: fd_array.map_or(0, |f| f.as_ptr() as u64),
        ..ProgLoadAttr::default()
    };
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        (e, String::from_utf8_lossy(&log[..end]).into_owned())
    })
}

/// Runs `prog` once on a "packet" holding `data_in`; what it left there
/// goes to `data_out`. Returns the program's return value.
pub fn test_run(prog: BorrowedFd<'_>, data_in: &[u8], data_out: &mut [u8]) -> std::io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data_in.len() as u32,
        data_size_out: data_out.len() as u32,
        data_in: data_in.as_ptr() as u64,
        data_out: data_out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

/// A descriptor of the kernel module `name`'s BTF object.
pub fn kernel_btf_object(name: &str) -> std::io::Result<OwnedFd> {
    let mut id = 0u32;
    loop {
        let mut next = [id, 0, 0];
        bpf(BPF_BTF_GET_NEXT_ID, &mut next)?;
        id = next[1];
        let mut by_id = [id, 0, 0];
        let Ok(fd) = bpf_fd(BPF_BTF_GET_FD_BY_ID, &mut by_id) else {
            continue;
        };
        let mut found = [0u8; 64];
        let mut info = BtfInfo {
            name: found.as_mut_ptr() as u64,
            name_len: found.len() as u32,
            ..BtfInfo::default()
        };
        #[repr(C)]
        struct InfoAttr {
            fd: u32,
            len: u32,
            info: u64,
        }
        let mut attr = InfoAttr {
            fd: fd.as_raw_fd() as u32,
            len: size_of::<BtfInfo>() as u32,
            info: (&raw mut info) as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        let end = found.iter().position(|&b| b == 0).unwrap_or(found.len());
        if info.kernel_btf != 0 && &found[..end] == name.as_bytes() {
            return Ok(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    /// The kernel fact evenflow's forwarded-connection entries are built
    /// around (see `agent_common::TAG_SHIFT`): a deleted hash-map element
    /// goes to the very next insert on the same CPU, preallocated or not
    /// (`BPF_F_NO_PREALLOC`). A program inserts key 1, notes where its
    /// value is, deletes it, inserts key 2 and compares.
    #[test]
    fn a_deleted_hash_map_entry_goes_to_the_next_insert() {
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_HASH: u32 = 1;
        const BPF_F_NO_PREALLOC: u32 = 1;
        // Helper numbers: map_lookup_elem, map_update_elem, map_delete_elem.
        const LOOKUP: i32 = 1;
        const UPDATE: i32 = 2;
        const DELETE: i32 = 3;
        for flags in [BPF_F_NO_PREALLOC, 0] {
            // `map_create`: type, key and value sizes, entries, flags.
            let mut create = [0u32; 32];
            create[..5].copy_from_slice(&[BPF_MAP_TYPE_HASH, 8, 8, 64, flags]);
            let map = bpf_fd(BPF_MAP_CREATE, &mut create).expect("a hash map");
            let fd = map.as_raw_fd();
            // r1 = the map, r2 = &key (fp-8) set to `key`, then `helper`.
            let call = |key: i32, helper: i32| {
                [
                    insn(STORE_DW, FP, 0, -8, key),
                    insn(LOAD_IMM64, 1, MAP_FD, 0, fd),
                    insn(0, 0, 0, 0, 0),
                    insn(MOV_REG, 2, FP, 0, 0),
                    insn(ADD_IMM, 2, 0, 0, -8),
                    insn(MOV_REG, 3, FP, 0, 0),
                    insn(ADD_IMM, 3, 0, 0, -16),
                    insn(MOV_IMM, 4, 0, 0, 0),
                    insn(CALL, 0, 0, 0, helper),
                ]
            };
            let mut prog = vec![insn(STORE_DW, FP, 0, -16, 0)];
            prog.extend(call(1, UPDATE));
            prog.extend(call(1, LOOKUP));
            prog.push(insn(MOV_REG, 6, 0, 0, 0));
            prog.extend(call(1, DELETE));
            prog.extend(call(2, UPDATE));
            prog.extend(call(2, LOOKUP));
            prog.extend([
                // 1 when key 2's value sits where key 1's did.
                insn(MOV_IMM, 7, 0, 0, 1),
                insn(JEQ_REG, 6, 0, 1, 0),
                insn(MOV_IMM, 7, 0, 0, 0),
                insn(MOV_REG, 0, 7, 0, 0),
                insn(EXIT, 0, 0, 0, 0),
            ]);
            let prog = load_xdp(&prog, c"evenflow_reuse", None)
                .unwrap_or_else(|(e, log)| panic!("{e}\n{log}"));
            let reused = test_run(prog.as_fd(), &[0; 64], &mut [0; 64]).expect("it runs");
            assert_eq!(
                reused, 1,
                "map flags {flags}: the element went to the next insert"
            );
        }
    }
}
