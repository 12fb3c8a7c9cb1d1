//! [`Table`]: the CLI's human output — left-aligned columns separated by
//! two spaces, an upper-case header row, no trailing spaces. Widths count
//! characters, not bytes.

/// A table being filled.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are an error of
    /// the caller (asserted).
    pub fn row(&mut self, cells: Vec<String>) {
        assert!(cells.len() <= self.headers.len(), "more cells than columns");
        self.rows.push(cells);
    }

    /// The rendered table, one line per row, ending with a newline.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < columns {
                    let pad = width - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `-` for a missing value.
pub fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_without_trailing_spaces() {
        let mut t = Table::new(&["name", "id", "health"]);
        t.row(vec!["db".into(), "1".into(), "healthy".into()]);
        t.row(vec!["logs-é".into(), "12".into()]);
        assert_eq!(
            t.render(),
            "NAME    ID  HEALTH\ndb      1   healthy\nlogs-é  12\n"
        );
        assert_eq!(Table::new(&["a"]).render(), "A\n");
        assert_eq!(or_dash(None::<u64>), "-");
        assert_eq!(or_dash(Some(3)), "3");
    }
}
