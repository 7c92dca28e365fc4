//! Sizes in bytes as people write and read them: `64MiB` in a flag or a
//! grants file, `64 MiB` in a message.

/// Bytes, optionally with a KiB, MiB or GiB suffix; zero is refused.
pub fn parse(text: &str) -> Result<usize, String> {
    let bad = || format!("`{text}` is not a size; write bytes, or a number with KiB, MiB or GiB");
    let trimmed = text.trim();
    let (number, unit) = match trimmed.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => trimmed.split_at(at),
        None => (trimmed, ""),
    };
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => return Err(bad()),
    };
    let value: usize = number.parse().map_err(|_| bad())?;
    match value.checked_mul(scale) {
        Some(0) | None => Err(bad()),
        Some(bytes) => Ok(bytes),
    }
}

/// In the unit people set it in: `64 MiB`, `512 KiB`, else `1000 bytes`.
pub fn show(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    const KIB: u64 = 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse("65536").unwrap(), 65536);
        assert_eq!(parse("64MiB").unwrap(), 64 << 20);
        assert!(parse("lots").is_err());
        assert!(parse("0").is_err());
    }

    #[test]
    fn sizes_read_like_settings() {
        assert_eq!(show(64 * 1024 * 1024), "64 MiB");
        assert_eq!(show(512 * 1024), "512 KiB");
        assert_eq!(show(1000), "1000 bytes");
    }
}
