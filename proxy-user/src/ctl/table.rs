//! The one way proxyctl lays out a table, in kubectl's plain style: no borders, a header
//! row, two spaces between columns, numbers right-aligned. comfy-table measures the
//! columns, so a value wider than the others widens its column instead of pushing the rest
//! of its row out of line.

use comfy_table::{CellAlignment, presets};

/// How a column's cells (and its header) sit in the column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows of text cells, laid out when rendered.
#[derive(Debug)]
pub struct Table {
    header: Option<Vec<String>>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

/// Spaces between two columns.
const GAP: u16 = 2;

impl Table {
    /// A table whose first line names the columns.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            header: Some(columns.iter().map(|(name, _)| (*name).to_owned()).collect()),
            aligns: columns.iter().map(|(_, align)| *align).collect(),
            rows: Vec::new(),
        }
    }

    /// A table without a header line, for rows set under another table's rows.
    pub fn headless(aligns: &[Align]) -> Self {
        Self {
            header: None,
            aligns: aligns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        // One line per row, whatever a cell holds.
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| cell.into().replace(['\n', '\r'], " "))
                .collect(),
        );
        self
    }

    /// One string per line (the header first, if any), without trailing spaces.
    pub fn lines(&self) -> Vec<String> {
        let mut grid = comfy_table::Table::new();
        grid.load_style(presets::NOTHING);
        if let Some(header) = &self.header {
            grid.set_header(header.clone());
        }
        grid.add_rows(self.rows.iter().cloned());
        let columns = grid.column_count();
        for (index, column) in grid.column_iter_mut().enumerate() {
            let gap = if index + 1 == columns { 0 } else { GAP };
            column.set_padding((0, gap));
            if self.aligns.get(index) == Some(&Align::Right) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        grid.lines()
            .map(|line| line.trim_end().to_owned())
            .collect()
    }

    /// Every line, each ended by a newline.
    pub fn render(&self) -> String {
        self.lines().into_iter().map(|line| line + "\n").collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_columns_two_spaces_apart_numbers_on_the_right() {
        let mut table = Table::new(&[("NAME", Align::Left), ("COUNT", Align::Right)]);
        table.row(["external_dropped_no_local_endpoint", "3"]);
        table.row(["translated", "821"]);
        assert_eq!(
            table.render(),
            "\
NAME                                COUNT
external_dropped_no_local_endpoint      3
translated                            821
"
        );
    }

    #[test]
    fn headless_tables_and_empty_cells() {
        let mut table = Table::headless(&[Align::Left, Align::Left, Align::Right]);
        table.row(["a", "", "1"]).row(["bb", "x", "10"]);
        assert_eq!(table.lines(), ["a       1", "bb  x  10"]);
        assert_eq!(Table::headless(&[Align::Left]).render(), "");
    }
}
