//! The `zerohop` command-line tool.

fn main() {}
