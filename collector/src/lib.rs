//! evenflow collector (see issue: collector).
