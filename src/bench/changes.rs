//! `dm --changes F`: a fraction F (at most 0.5) of each sender's messages are not sends but
//! changes of the send just before them: an edit, a reaction or a deletion, in turn. Each
//! goes through the same batched write as a send, and each reaches the receiver as one
//! durable event (`message_edited`, `reaction`, `message_deleted`), so their ack and
//! delivery latencies stand beside the sends' in one load.
//!
//! Which of a sender's messages is a change is fixed before the run, like their due times:
//! message k of sender i is a change when k·F + φᵢ passes an integer at k (φᵢ a phase per
//! sender, so that the senders' changes do not all fall at once, and the kinds take turns
//! from a different one per sender). So changes are spread evenly and, with F ≤ 0.5, never
//! follow each other: each has a send before it, its target, and each send is the target
//! of one change at most (an edit or a reaction never finds its message deleted).
//!
//! A change names its target by cseq, which only the target's ack tells: the writer waits
//! for that ack when it has not come by the change's due time (as a client must), and the
//! change's latency still counts from its due time. The receiver tells the changes apart
//! by the same cseq, which it read in the target's `message` event.

use super::load::BODY;

/// The most a run may use: more would put two changes in a row.
pub(crate) const MAX_FRACTION: f64 = 0.5;

/// What a message of a sender is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Send,
    Edit,
    React,
    Delete,
}

impl Kind {
    /// The changes, in the order they take turns; `index` is a change's place here.
    pub(crate) const CHANGES: [Kind; 3] = [Kind::Edit, Kind::React, Kind::Delete];

    pub(crate) fn index(self) -> usize {
        match self {
            Kind::Send => usize::MAX,
            Kind::Edit => 0,
            Kind::React => 1,
            Kind::Delete => 2,
        }
    }

    /// The request's name, as the latency rows show it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Send => "send",
            Kind::Edit => "edit",
            Kind::React => "react",
            Kind::Delete => "delete",
        }
    }

    /// The change that the event of this type tells about.
    pub(crate) fn of_event(kind: &str) -> Option<Kind> {
        match kind {
            "message_edited" => Some(Kind::Edit),
            "reaction" => Some(Kind::React),
            "message_deleted" => Some(Kind::Delete),
            _ => None,
        }
    }
}

/// Which of one sender's messages are changes, and of which kind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mix {
    fraction: f64,
    phase: f64,
    turn: u64,
}

impl Mix {
    /// Sends only.
    pub(crate) const NONE: Mix = Mix {
        fraction: 0.0,
        phase: 0.0,
        turn: 0,
    };

    /// The mix of sender `sender` for `fraction` (0 ..= [`MAX_FRACTION`]).
    pub(crate) fn new(fraction: f64, sender: usize) -> Mix {
        // The golden ratio's fraction spreads the phases evenly for any number of senders.
        let phase = (sender as f64 * 0.618_033_988_749_895).fract();
        Mix {
            fraction,
            phase,
            turn: (sender % Kind::CHANGES.len()) as u64,
        }
    }

    pub(crate) fn active(&self) -> bool {
        self.fraction > 0.0
    }

    /// What message `k` is. Message 0 is always a send (a change needs one before it).
    pub(crate) fn kind(&self, k: u64) -> Kind {
        if !self.active() || k == 0 {
            return Kind::Send;
        }
        let before = (k as f64 * self.fraction + self.phase).floor();
        let at = ((k + 1) as f64 * self.fraction + self.phase).floor();
        if at > before {
            let n = Kind::CHANGES.len() as u64;
            Kind::CHANGES[((at as u64 + self.turn) % n) as usize]
        } else {
            Kind::Send
        }
    }
}

/// The frame of change `k` (of `kind`) of message `cseq` in `conversation` (a JSON string,
/// quoted). An edit's body names k, so that it differs from every body before it (an edit
/// to the same body is answered with no event).
pub(crate) fn frame(kind: Kind, k: u64, conversation: &str, cseq: i64) -> String {
    match kind {
        Kind::Edit => format!(
            r#"{{"type":"edit","conversation":{conversation},"cseq":{cseq},"body":"{BODY} (edited, {k})","ref":{k}}}"#
        ),
        Kind::React => format!(
            r#"{{"type":"react","conversation":{conversation},"cseq":{cseq},"emoji":"👍","on":true,"ref":{k}}}"#
        ),
        Kind::Delete => {
            format!(r#"{{"type":"delete","conversation":{conversation},"cseq":{cseq},"ref":{k}}}"#)
        }
        Kind::Send => unreachable!("a send is the scenario's own frame"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_the_fraction_asked_spread_out_and_each_follows_a_send() {
        for fraction in [0.1, 0.3, 0.5] {
            for sender in 0..50 {
                let mix = Mix::new(fraction, sender);
                let kinds: Vec<Kind> = (0..1000).map(|k| mix.kind(k)).collect();
                assert_eq!(kinds[0], Kind::Send);
                let changes = kinds.iter().filter(|k| **k != Kind::Send).count() as f64;
                assert!(
                    (changes - 1000.0 * fraction).abs() <= 2.0,
                    "{fraction}: {changes}"
                );
                for w in kinds.windows(2) {
                    assert!(w[0] == Kind::Send || w[1] == Kind::Send, "{fraction}");
                }
                // The kinds take turns.
                let of = |c: Kind| kinds.iter().filter(|k| **k == c).count() as f64;
                for c in Kind::CHANGES {
                    assert!((of(c) - changes / 3.0).abs() <= 1.0);
                }
            }
        }
        assert!((0..100).all(|k| Mix::NONE.kind(k) == Kind::Send));
    }

    #[test]
    fn senders_do_not_change_at_once() {
        let first = |s| {
            (0..)
                .find(|&k| Mix::new(0.2, s).kind(k) != Kind::Send)
                .unwrap()
        };
        let firsts: std::collections::BTreeSet<u64> = (0..10).map(first).collect();
        assert!(firsts.len() >= 4, "{firsts:?}");
    }

    #[test]
    fn change_frames_are_json_requests() {
        for kind in Kind::CHANGES {
            let f: serde_json::Value =
                serde_json::from_str(&frame(kind, 7, r#""d12""#, 3)).unwrap();
            assert_eq!(
                (
                    f["conversation"].as_str(),
                    f["cseq"].as_i64(),
                    f["ref"].as_i64()
                ),
                (Some("d12"), Some(3), Some(7))
            );
            assert_eq!(f["type"], kind.name());
        }
    }
}
