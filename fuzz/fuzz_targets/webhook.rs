//! Arbitrary bytes into the pure `parse_and_verify`: the first line is the query string, the
//! rest the body. It must never panic, and every answer must be coherent.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use livebattle_ingest::{parse_and_verify, Action, AppConfig, IngestConfig, Verifier};

/// 2025-02-19T08:33:25Z, the samples' EventTime, as the engine clock.
const NOW_MS: i64 = 1_739_954_005_000;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let config = IngestConfig {
            apps: vec![
                AppConfig::new("1400000001"),
                AppConfig::with_token("1400000002", "xxxxyyyy"),
            ],
            body_limit: 16 * 1024,
            ..IngestConfig::default()
        };
        match Verifier::new(&config, NOW_MS) {
            Ok(v) => v,
            Err(e) => panic!("fuzz config: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (query, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let query = String::from_utf8_lossy(query);
    match parse_and_verify(verifier(), &query, body, NOW_MS) {
        Ok(accepted) => {
            assert!(accepted.sdk_app_id == "1400000001" || accepted.sdk_app_id == "1400000002");
            match &accepted.action {
                Action::Apply(event) => {
                    assert!(accepted.command.is_applied());
                    if let Some(id) = event.battle_id() {
                        assert!(!id.is_empty());
                    }
                }
                Action::Acknowledge => assert!(!accepted.command.is_applied()),
            }
        }
        Err(refusal) => {
            let code = refusal.reason.code();
            assert_eq!(u32::from(refusal.reason.status().as_u16()), code / 10);
            assert!(!refusal.info.is_empty());
            let reply = refusal.reply().to_json();
            assert!(reply.starts_with("{\"ActionStatus\":\"FAIL\""));
        }
    }
});
