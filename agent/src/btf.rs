//! Just enough of the kernel's BTF to find where fields sit in a struct.
//!
//! The socket samplers and sock_ops read `struct tcp_sock` and `struct
//! sock` fields; where they sit changes with every kernel build and
//! configuration, so the agent looks the offsets up in this kernel's
//! `/sys/kernel/btf/vmlinux` and hands them to the programs as constants
//! before they are loaded. aya parses BTF too but keeps struct members
//! private.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("not BTF (bad magic {0:#06x})")]
    Magic(u16),
    #[error("BTF is truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF type kind {0} is unknown to this agent")]
    UnknownKind(u32),
    #[error("this kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("this kernel's BTF has no function {0}")]
    NoFunc(String),
    #[error("this kernel's struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("member {0}.{1} is a bitfield")]
    Bitfield(String, String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;

/// A parsed BTF blob: its type and string sections, and for a module's
/// split BTF the string section of the kernel's it extends.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    base_strings: &'a [u8],
    /// The id of this blob's first type: a split BTF's ids continue from
    /// its base's.
    first_id: u32,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Truncated(at))
}

impl<'a> Btf<'a> {
    /// Splits a little-endian BTF blob into its sections.
    pub fn parse(blob: &'a [u8]) -> Result<Self, BtfError> {
        let magic = blob
            .get(0..2)
            .map(|m| u16::from_le_bytes([m[0], m[1]]))
            .ok_or(BtfError::Truncated(0))?;
        if magic != MAGIC {
            return Err(BtfError::Magic(magic));
        }
        let hdr_len = u32_at(blob, 4)? as usize;
        let section = |off_at: usize, len_at: usize| -> Result<&'a [u8], BtfError> {
            let start = hdr_len + u32_at(blob, off_at)? as usize;
            let len = u32_at(blob, len_at)? as usize;
            blob.get(start..start + len)
                .ok_or(BtfError::Truncated(start + len))
        };
        Ok(Self {
            types: section(8, 12)?,
            strings: section(16, 20)?,
            base_strings: &[],
            first_id: 1,
        })
    }

    /// Parses a module's split BTF (`/sys/kernel/btf/<module>`), whose
    /// names may sit in `base`'s (the kernel's) string section.
    pub fn parse_split(blob: &'a [u8], base: &Btf<'a>) -> Result<Self, BtfError> {
        Ok(Self {
            base_strings: base.strings,
            first_id: base.first_id + base.type_count()?,
            ..Self::parse(blob)?
        })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        // A split BTF's string offsets continue from its base's.
        let (strings, off) = match (off as usize).checked_sub(self.base_strings.len()) {
            Some(own) => (self.strings, own),
            None => (self.base_strings, off as usize),
        };
        let rest = strings.get(off..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The byte offset of `member` (a non-bitfield member, directly or
    /// inside an anonymous struct or union) in `struct name`.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let s = self.find_struct(name)?;
        self.find_member(s.body, s.vlen, s.kind_flag, name, member, 0)
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        Ok(self.find_struct(name)?.size)
    }

    /// The type id of function `name` (a kfunc's, for a call to it).
    pub fn func_id(&self, name: &str) -> Result<u32, BtfError> {
        self.find_type(|id, t| {
            (t.kind == KIND_FUNC && self.name(t.name_off) == name.as_bytes()).then_some(id)
        })?
        .ok_or_else(|| BtfError::NoFunc(name.to_owned()))
    }

    fn find_struct(&self, name: &str) -> Result<Struct, BtfError> {
        self.find_type(|_, t| {
            (t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes()).then_some(t.members)
        })?
        .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// The first of this blob's types, with their ids, for which `f` gives
    /// something.
    fn find_type<T>(
        &self,
        mut f: impl FnMut(u32, &Type) -> Option<T>,
    ) -> Result<Option<T>, BtfError> {
        let (mut at, mut id) = (0, self.first_id);
        while at < self.types.len() {
            let info = u32_at(self.types, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, info & 0xffff);
            let t = Type {
                name_off: u32_at(self.types, at)?,
                kind,
                members: Struct {
                    body: at + 12,
                    vlen,
                    kind_flag: info >> 31 == 1,
                    size: u32_at(self.types, at + 8)?,
                },
            };
            if let Some(found) = f(id, &t) {
                return Ok(Some(found));
            }
            at += 12 + body_len(kind, vlen)?;
            id += 1;
        }
        Ok(None)
    }

    fn find_member(
        &self,
        body: usize,
        vlen: u32,
        kind_flag: bool,
        name: &str,
        member: &str,
        depth: u32,
    ) -> Result<u32, BtfError> {
        for i in 0..vlen as usize {
            let m = body + i * 12;
            let raw = u32_at(self.types, m + 8)?;
            let (bits, bitfield_size) = if kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            let member_name = self.name(u32_at(self.types, m)?);
            // Anonymous structs and unions nest a few deep in C; a blob
            // that nests deeper is not followed.
            if member_name.is_empty() && depth < 8 {
                let Some(inner) = self.anonymous(u32_at(self.types, m + 4)?)? else {
                    continue;
                };
                let found = self.find_member(
                    inner.body,
                    inner.vlen,
                    inner.kind_flag,
                    name,
                    member,
                    depth + 1,
                );
                match found {
                    Ok(off) => return Ok(bits / 8 + off),
                    Err(BtfError::NoMember(..)) => continue,
                    Err(e) => return Err(e),
                }
            }
            if member_name != member.as_bytes() {
                continue;
            }
            if bitfield_size != 0 || bits % 8 != 0 {
                return Err(BtfError::Bitfield(name.to_owned(), member.to_owned()));
            }
            return Ok(bits / 8);
        }
        Err(BtfError::NoMember(name.to_owned(), member.to_owned()))
    }

    /// How many types this blob holds.
    fn type_count(&self) -> Result<u32, BtfError> {
        let mut n = 0;
        self.find_type(|_, _| {
            n += 1;
            None::<()>
        })?;
        Ok(n)
    }

    /// Type `id` when it is a struct or union (an anonymous member's) of
    /// this blob; `None` for any other, and for a split BTF's base types.
    fn anonymous(&self, id: u32) -> Result<Option<Struct>, BtfError> {
        Ok(self
            .find_type(|n, t| (n == id).then_some(*t))?
            .filter(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION)
            .map(|t| t.members))
    }
}

/// One type's header, as [`Btf::find_type`] walks them.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Where its members would be (a struct's or union's).
    members: Struct,
}

/// Where a struct's members are, and its size.
#[derive(Clone, Copy)]
struct Struct {
    body: usize,
    vlen: u32,
    kind_flag: bool,
    size: u32,
}

/// Bytes that follow a type's 12-byte header, by kind.
fn body_len(kind: u32, vlen: u32) -> Result<usize, BtfError> {
    let vlen = vlen as usize;
    Ok(match kind {
        // INT, VAR, DECL_TAG: one u32.
        1 | 14 | 17 => 4,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // ARRAY.
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64: 12 bytes per member.
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO: 8 bytes per member.
        6 | 13 => 8 * vlen,
        k => return Err(BtfError::UnknownKind(k)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one `struct s { u64 a; u32 b; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0s\0a\0b\0u64\0";
        #[rustfmt::skip]
        let types = words(&[
            // [1] INT u64
            7, 1 << 24, 8, 64,
            // [2] STRUCT s, 2 members: a, b
            1, (4 << 24) | 2, 16,
            3, 1, 0,
            5, 1, 64,
        ]);
        with_header(&types, strings)
    }

    /// Little-endian words, as BTF's type section holds them.
    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A module's split BTF over [`blob`]: `struct m { u64 c; u64 a; }`,
    /// its own names after the base's strings, `a` and `u64` reused from
    /// the base's.
    fn module_blob() -> Vec<u8> {
        let base_len = 11;
        let strings = b"m\0c\0";
        #[rustfmt::skip]
        let types = words(&[
            // [3] STRUCT m, 2 members, its type ids following the base's:
            // c, then a (a base string)
            base_len, (4 << 24) | 2, 16,
            base_len + 2, 1, 0,
            3, 1, 64,
        ]);
        with_header(&types, strings)
    }

    fn with_header(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_member_offsets() {
        let b = blob();
        let btf = Btf::parse(&b).expect("parses");
        assert_eq!(btf.member_offset("s", "a").expect("a"), 0);
        assert_eq!(btf.member_offset("s", "b").expect("b"), 8);
        assert!(matches!(
            btf.member_offset("s", "c"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.member_offset("t", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    /// `struct o { u64 x; union { u64 y; }; }` after [`blob`]'s types.
    #[test]
    fn finds_members_inside_anonymous_unions() {
        let strings = b"\0s\0a\0b\0u64\0o\0x\0y\0";
        #[rustfmt::skip]
        let types = words(&[
            // [1] INT u64
            7, 1 << 24, 8, 64,
            // [2] UNION, anonymous, 1 member: y
            0, (5 << 24) | 1, 8,
            15, 1, 0,
            // [3] STRUCT o, 2 members: x, then the anonymous union
            11, (4 << 24) | 2, 16,
            13, 1, 0,
            0, 2, 64,
        ]);
        let b = with_header(&types, strings);
        let btf = Btf::parse(&b).expect("parses");
        assert_eq!(btf.member_offset("o", "x").expect("x"), 0);
        assert_eq!(btf.member_offset("o", "y").expect("y"), 8);
        assert!(matches!(
            btf.member_offset("o", "z"),
            Err(BtfError::NoMember(..))
        ));
    }

    #[test]
    fn finds_struct_sizes() {
        let b = blob();
        let btf = Btf::parse(&b).expect("parses");
        assert_eq!(btf.struct_size("s").expect("s"), 16);
        assert!(matches!(btf.struct_size("t"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn reads_a_modules_split_btf() {
        let (b, m) = (blob(), module_blob());
        let base = Btf::parse(&b).expect("base parses");
        let module = Btf::parse_split(&m, &base).expect("module parses");
        assert_eq!(module.member_offset("m", "c").expect("c"), 0);
        assert_eq!(module.member_offset("m", "a").expect("a"), 8);
        assert_eq!(module.struct_size("m").expect("m"), 16);
        // Without its base, the module's names point nowhere.
        let alone = Btf::parse(&m).expect("parses alone");
        assert!(alone.member_offset("m", "c").is_err());
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(matches!(Btf::parse(&[0, 0, 0, 0]), Err(BtfError::Magic(0))));
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Truncated(0))));
    }

    #[test]
    fn reads_this_kernels_tcp_sock() {
        // Every kernel evenflow runs on has BTF (the agent refuses to start
        // without it): the sampler needs the four counters, sock_ops
        // `write_seq` at a close an RST caused.
        let blob = std::fs::read("/sys/kernel/btf/vmlinux").expect("this kernel has BTF");
        let btf = Btf::parse(&blob).expect("parses");
        for f in [
            "bytes_received",
            "bytes_acked",
            "segs_in",
            "segs_out",
            "write_seq",
            "snd_una",
            "rcv_nxt",
        ] {
            let off = btf.member_offset("tcp_sock", f).expect(f);
            assert!(off > 0 && off < 4096, "{f} at {off}");
        }
        // Inside an anonymous union of `struct sock_common` on this kernel.
        let flags = btf
            .member_offset("sock_common", "skc_flags")
            .expect("skc_flags");
        let cookie = btf
            .member_offset("sock_common", "skc_cookie")
            .expect("skc_cookie");
        assert!(flags > cookie && flags < 256, "skc_flags at {flags}");
    }
}
