//! Statements written with named parameters (`:name`), resolved once to
//! Postgres' `$n`, and bound by name: a composed statement's parts agree on
//! names, not on positions, and a bind out of order fails on its first run.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Encode, Postgres, Type};

/// A statement's text with its parameters named. `:name` is a parameter
/// (a letter or `_`, then letters, digits or `_`); `::type` is a cast, and
/// nothing inside a quoted literal is a parameter.
pub struct Named {
    pieces: Vec<Piece>,
    names: Vec<&'static str>,
    sql: String,
}

enum Piece {
    Text(String),
    Param(usize),
}

impl Named {
    /// Resolves `template`'s parameters, numbered in the order of `names`.
    /// Panics on a parameter not in `names` or a name the text never uses:
    /// statements are built once, from code, and a test builds them all.
    pub fn new(template: &str, names: &[&'static str]) -> Self {
        let mut pieces = Vec::new();
        let mut used = vec![false; names.len()];
        let mut text = String::new();
        let mut chars = template.char_indices().peekable();
        let mut quoted = false;
        let mut prev = ' ';
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                quoted = !quoted;
            }
            let starts_name = chars
                .peek()
                .is_some_and(|&(_, n)| n.is_ascii_lowercase() || n == '_');
            if c == ':' && !quoted && prev != ':' && starts_name {
                let rest = &template[i + 1..];
                let len = rest
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .unwrap_or(rest.len());
                let name = &rest[..len];
                let index = names
                    .iter()
                    .position(|n| *n == name)
                    .unwrap_or_else(|| panic!("parameter :{name} is not declared in {names:?}"));
                used[index] = true;
                pieces.push(Piece::Text(std::mem::take(&mut text)));
                pieces.push(Piece::Param(index));
                for _ in 0..len {
                    chars.next();
                }
                prev = 'x';
                continue;
            }
            text.push(c);
            prev = c;
        }
        pieces.push(Piece::Text(text));
        if let Some(i) = used.iter().position(|u| !u) {
            panic!("parameter :{} is declared but not used", names[i]);
        }
        let mut named = Self {
            pieces,
            names: names.to_vec(),
            sql: String::new(),
        };
        named.sql = named.render(|i| format!("${}", i + 1));
        named
    }

    /// The text Postgres runs (`$1`, `$2`, …).
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The parameters' names, in the order they are bound.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The text with `:name` parameters (as pgbench reads them), each name
    /// in `replace` written as the SQL given for it instead (e.g. `NULL`;
    /// the last given for a name counts).
    pub fn with_names(&self, replace: &[(&str, &str)]) -> String {
        self.render(|i| {
            let name = self.names[i];
            match replace.iter().rev().find(|(n, _)| *n == name) {
                Some((_, sql)) => (*sql).to_owned(),
                None => format!(":{name}"),
            }
        })
    }

    fn render(&self, param: impl Fn(usize) -> String) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Param(i) => out.push_str(&param(*i)),
            }
        }
        out
    }

    /// A query of this statement, bound by name in declaration order.
    pub fn query(&self) -> Binder<'_> {
        Binder {
            query: sqlx::query(self.sql()),
            names: &self.names,
            next: 0,
        }
    }
}

/// Binds a [`Named`] statement's values, each with the name it is for.
pub struct Binder<'q> {
    query: Query<'q, Postgres, PgArguments>,
    names: &'q [&'static str],
    next: usize,
}

impl<'q> Binder<'q> {
    /// Binds `value` to `name`, which must be the next declared parameter.
    pub fn bind<T>(mut self, name: &str, value: T) -> Self
    where
        T: 'q + Encode<'q, Postgres> + Type<Postgres>,
    {
        let expected = self.names.get(self.next).copied();
        assert_eq!(expected, Some(name), "bound :{name} out of order");
        self.next += 1;
        self.query = self.query.bind(value);
        self
    }

    /// The bound query; panics if a parameter was left unbound.
    pub fn done(self) -> Query<'q, Postgres, PgArguments> {
        assert_eq!(
            self.next,
            self.names.len(),
            "unbound parameters: {:?}",
            &self.names[self.next..]
        );
        self.query
    }

    /// The bound query, its rows read as `T`.
    pub fn done_as<T>(
        self,
    ) -> sqlx::query::Map<
        'q,
        Postgres,
        impl FnMut(PgRow) -> Result<T, sqlx::Error> + Send,
        PgArguments,
    >
    where
        T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        self.done().try_map(|row: PgRow| T::from_row(&row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_positions_and_casts_and_literals_stay() {
        let n = Named::new(
            "SELECT :b::int, ':a', :a, x::text, :b FROM t WHERE y = :a_2",
            &["a", "b", "a_2"],
        );
        assert_eq!(
            n.sql(),
            "SELECT $2::int, ':a', $1, x::text, $2 FROM t WHERE y = $3"
        );
        assert_eq!(
            n.with_names(&[("b", "NULL")]),
            "SELECT NULL::int, ':a', :a, x::text, NULL FROM t WHERE y = :a_2"
        );
    }

    #[test]
    #[should_panic(expected = "not declared")]
    fn an_undeclared_parameter_is_refused() {
        Named::new("SELECT :a, :b", &["a"]);
    }

    #[test]
    #[should_panic(expected = "not used")]
    fn an_unused_name_is_refused() {
        Named::new("SELECT :a", &["a", "b"]);
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn a_bind_out_of_order_is_refused() {
        let n = Named::new("SELECT :a, :b", &["a", "b"]);
        let _ = n.query().bind("b", 1i32);
    }
}
