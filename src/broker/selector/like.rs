//! LIKE patterns: `%` any run of characters, `_` exactly one, and an
//! optional escape character that makes the next `%`, `_` or itself
//! literal. Matched without a regex engine, in time linear in the text for
//! a pattern with at most one `%`, and O(text x pattern) at worst.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `_`
    One,
    /// `%`
    Any,
    Lit(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LikePattern {
    parts: Vec<Part>,
}

impl LikePattern {
    /// As in ActiveMQ, an escape character before anything other than
    /// `%`, `_` or itself is an ordinary character.
    pub fn new(pattern: &str, escape: Option<char>) -> LikePattern {
        let mut parts = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if Some(c) == escape {
                match chars.peek() {
                    Some(&n) if n == '%' || n == '_' || Some(n) == escape => {
                        parts.push(Part::Lit(n));
                        chars.next();
                        continue;
                    }
                    // A trailing escape escapes nothing: ActiveMQ takes it
                    // literally, SQL calls it an error; literally it is.
                    _ => {}
                }
            }
            parts.push(match c {
                '%' => Part::Any,
                '_' => Part::One,
                c => Part::Lit(c),
            });
        }
        // Runs of % are one %.
        parts.dedup_by(|a, b| *a == Part::Any && *b == Part::Any);
        LikePattern { parts }
    }

    pub fn matches(&self, text: &str) -> bool {
        let p = &self.parts;
        // Classic wildcard matching with one backtrack point: on a
        // mismatch, the last % swallows one more character and the rest is
        // tried again. Positions in `text` are byte offsets on char
        // boundaries.
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        loop {
            let c = text[ti..].chars().next();
            match (p.get(pi), c) {
                (Some(Part::Any), _) => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                (Some(Part::One), Some(c)) => {
                    pi += 1;
                    ti += c.len_utf8();
                    continue;
                }
                (Some(Part::Lit(l)), Some(c)) if *l == c => {
                    pi += 1;
                    ti += c.len_utf8();
                    continue;
                }
                (None, None) => return true,
                _ => {}
            }
            // Mismatch (or pattern left over at the end of the text):
            // backtrack to the last %, which takes one more character.
            let Some((sp, st)) = star else { return false };
            let Some(c) = text[st..].chars().next() else {
                return false;
            };
            let st = st + c.len_utf8();
            star = Some((sp, st));
            pi = sp + 1;
            ti = st;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(p: &str, t: &str) -> bool {
        LikePattern::new(p, None).matches(t)
    }

    fn like_esc(p: &str, e: char, t: &str) -> bool {
        LikePattern::new(p, Some(e)).matches(t)
    }

    #[test]
    fn percent_and_underscore() {
        // JMS 1.1 §3.8.1.2's examples.
        assert!(like("12%3", "123"));
        assert!(like("12%3", "12993"));
        assert!(!like("12%3", "1234"));
        assert!(like("l_se", "lose"));
        assert!(!like("l_se", "loose"));
        assert!(like("%", ""));
        assert!(!like("_", ""));
        assert!(like("", ""));
        assert!(!like("", "a"));
        assert!(like("%a%b%", "xxaxxbxx"));
        assert!(!like("%a%b%", "xxbxxaxx"));
        assert!(like("a%%%", "a"));
        assert!(like("%ab", "aab"));
        assert!(like("%aab", "aaab"));
    }

    #[test]
    fn underscore_is_one_character_not_one_byte() {
        assert!(like("_", "é"));
        assert!(like("b_r", "bär"));
        assert!(!like("__", "é"));
        assert!(like("%ß", "straß"));
    }

    #[test]
    fn escape_makes_wildcards_literal() {
        // JMS 1.1: `underscored LIKE '\_%' ESCAPE '\'`.
        assert!(like_esc("\\_%", '\\', "_foo"));
        assert!(!like_esc("\\_%", '\\', "bar"));
        assert!(like_esc("100!%", '!', "100%"));
        assert!(!like_esc("100!%", '!', "1000"));
        assert!(like_esc("a!!b", '!', "a!b"));
        // Before anything else, and at the end, the escape is literal.
        assert!(like_esc("a!b", '!', "a!b"));
        assert!(like_esc("a!", '!', "a!"));
    }

    #[test]
    fn regex_characters_are_plain() {
        assert!(like("a.c", "a.c"));
        assert!(!like("a.c", "abc"));
        assert!(like("[x]*", "[x]*"));
    }

    #[test]
    fn worst_case_stays_quick() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "%a".repeat(50));
        assert!(!like(&pattern, &text));
    }
}
