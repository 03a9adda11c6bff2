//! The announcement a node sends with each committed batch on PostgreSQL: `<node> <id> <id> ...`
//! (ids only, ascending, so no message size depends on NOTIFY's 8000-byte payload limit).
//! This one type writes and reads it.

/// The channel committed message ids are announced on.
pub const CHANNEL: &str = "chatd_messages";
/// Ids per payload: ~20 bytes each stays well under PostgreSQL's 8000-byte limit.
const IDS_PER_PAYLOAD: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement<'a> {
    pub node: &'a str,
    pub ids: Vec<i64>,
}

impl<'a> Announcement<'a> {
    /// The payloads announcing `ids` (ascending) stored by `node`.
    pub fn encode(node: &str, ids: &[i64]) -> Vec<String> {
        ids.chunks(IDS_PER_PAYLOAD)
            .map(|chunk| {
                let mut payload = String::with_capacity(node.len() + chunk.len() * 12);
                payload.push_str(node);
                for id in chunk {
                    payload.push(' ');
                    payload.push_str(&id.to_string());
                }
                payload
            })
            .collect()
    }

    /// Reads a payload; `None` if it is not an announcement.
    pub fn parse(payload: &'a str) -> Option<Announcement<'a>> {
        let mut parts = payload.split(' ');
        let node = parts.next().filter(|n| !n.is_empty())?;
        let ids = parts.map(|id| id.parse().ok()).collect::<Option<Vec<i64>>>()?;
        Some(Announcement { node, ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_chunks() {
        let ids: Vec<i64> = (1..=650).collect();
        let payloads = Announcement::encode("node-1", &ids);
        assert_eq!(payloads.len(), 3);
        assert!(payloads.iter().all(|p| p.len() < 8000));
        let back: Vec<i64> = payloads
            .iter()
            .flat_map(|p| Announcement::parse(p).unwrap().ids)
            .collect();
        assert_eq!(back, ids);
        assert_eq!(Announcement::parse(&payloads[0]).unwrap().node, "node-1");
    }

    #[test]
    fn refuses_what_is_not_an_announcement() {
        assert_eq!(Announcement::parse(""), None);
        assert_eq!(Announcement::parse("node 1 x"), None);
    }
}
