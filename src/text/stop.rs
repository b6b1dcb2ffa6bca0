//! Stop strings over streamed text. Text that could still be the start of a stop string is held
//! back until the next piece shows it is not, so a caller never sees part of a stop string.

/// Result of feeding one piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fed {
    /// Text that is now safe to emit.
    pub emit: String,
    /// A stop string was found; `emit` ends right before it.
    pub stopped: bool,
}

/// Watches streamed text for any of a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    pub fn feed(&mut self, piece: &str) -> Fed {
        self.pending.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return Fed {
                emit,
                stopped: true,
            };
        }
        let hold = self.held_suffix();
        let emit = self.pending[..self.pending.len() - hold].to_string();
        self.pending.drain(..self.pending.len() - hold);
        Fed {
            emit,
            stopped: false,
        }
    }

    /// Releases the held-back text (the stream ended without a stop string).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn held_suffix(&self) -> usize {
        let p = &self.pending;
        (1..=p.len())
            .rev()
            .filter(|&k| p.is_char_boundary(p.len() - k))
            .find(|&k| {
                self.stops
                    .iter()
                    .any(|s| s.len() > k && s.starts_with(&p[p.len() - k..]))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let fed = m.feed(p);
            out += &fed.emit;
            if fed.stopped {
                return (out, true);
            }
        }
        out += &m.flush();
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_never_emitted() {
        let stops = vec!["User:".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.feed("Hello Us").emit, "Hello ");
        let fed = m.feed("er: more");
        assert_eq!(
            fed,
            Fed {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(
            run(&["User:"], &["a Us", "ually b"]),
            ("a Usually b".into(), false)
        );
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
    }

    #[test]
    fn multibyte_text_is_held_on_char_boundaries() {
        assert_eq!(
            run(&["日本語"], &["これは日", "本", "語です"]),
            ("これは".into(), true)
        );
        assert_eq!(
            run(&["日本語"], &["これは日", "本だ"]),
            ("これは日本だ".into(), false)
        );
    }
}
