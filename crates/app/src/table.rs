//! The one text-table renderer (`esb up`'s endpoints, `esb ps`, `esb user
//! list`): aligned columns, two spaces apart, no trailing blanks.

/// Renders rows as an aligned text table (the first row is the header).
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align_and_lines_have_no_trailing_blanks() {
        let rows = [
            ["NAME".to_string(), "PIDS".to_string()],
            ["hello".to_string(), String::new()],
        ];
        assert_eq!(super::table(&rows), "NAME   PIDS\nhello\n");
    }
}
