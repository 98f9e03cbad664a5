//! Tests of [`super`] (layout.rs).
use super::*;

fn change(index: u64, conv: &str, sender: &str, at: i64, kind: ChangeKind) -> Change {
    Change {
        index,
        term: 2,
        request: Ulid::from_parts(at as u64, index as u128),
        sender: UserId::new(sender).unwrap(),
        at,
        conversation: ConversationId::new(conv).unwrap(),
        kind,
        signature: None,
    }
}

fn post(index: u64, conv: &str, sender: &str, at: i64, text: &str) -> Change {
    let mut c = change(
        index,
        conv,
        sender,
        at,
        ChangeKind::Post {
            message: Ulid::nil(),
            content: text.into(),
            attachments: Vec::new(),
        },
    );
    c.kind = ChangeKind::Post {
        message: c.request,
        content: text.into(),
        attachments: Vec::new(),
    };
    c
}

const DAY1: i64 = 1_763_800_000_000; // 2025-11-22
const DAY2: i64 = DAY1 + 86_400_000;

fn sample() -> Vec<Change> {
    let p = post(3, "general", "ana", DAY1, "hi \"there\"\nüñí");
    let m = p.request;
    vec![
        p,
        post(4, "random", "bob", DAY1 + 5, "yo"),
        change(
            6,
            "general",
            "ana",
            DAY2,
            ChangeKind::Edit {
                message: m,
                content: "hello".into(),
            },
        ),
        change(
            7,
            "general",
            "ana",
            DAY2 + 1,
            ChangeKind::Delete { message: m },
        ),
        change(
            9,
            "ops",
            "bob",
            DAY2 + 2,
            ChangeKind::CreateConversation {
                title: "Ops & on-call".into(),
            },
        ),
    ]
}

#[test]
fn rendering_groups_by_conversation_and_day_and_reads_back() {
    let changes = sample();
    let b = render(&changes).unwrap();
    let paths: Vec<&str> = b.files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            ".messages/general/2025/11/22/000000000003-000000000003.jsonl",
            ".messages/general/2025/11/23/000000000006-000000000007.jsonl",
            ".messages/ops/2025/11/23/000000000009-000000000009.jsonl",
            ".messages/random/2025/11/22/000000000004-000000000004.jsonl",
        ]
    );
    let mut back = Vec::new();
    for (p, bytes) in &b.files {
        back.extend(parse_batch(p, bytes).unwrap());
    }
    back.sort_by_key(|c| c.index);
    assert_eq!(back, changes);
    assert_eq!((b.first_index, b.last_index, b.last_term), (3, 9, 2));
    assert_eq!(watermark(&b.message), Some(9));
    assert_eq!(trailer(&b.message, "Skygit-Senders"), Some("ana=3, bob=2"));
    assert_eq!(b.time_secs, (DAY2 + 2) / 1000);
}

#[test]
fn rendering_is_deterministic() {
    assert_eq!(render(&sample()), render(&sample()));
    assert_eq!(render(&[]), None);
}

#[test]
fn big_batches_split_into_bounded_files() {
    let changes: Vec<Change> = (1..=MAX_BATCH_LINES as u64 + 5)
        .map(|i| post(i, "general", "ana", DAY1, "x"))
        .collect();
    let b = render(&changes).unwrap();
    assert_eq!(b.files.len(), 2);
    let n: usize = b
        .files
        .iter()
        .map(|(p, bytes)| parse_batch(p, bytes).unwrap().len())
        .sum();
    assert_eq!(n, changes.len());
}

#[test]
fn trailers_are_read_from_the_last_paragraph_only() {
    assert_eq!(watermark("x\n\nRaft-Last-Index: 12\n"), Some(12));
    assert_eq!(watermark("Raft-Last-Index: 12\n\nbody"), None);
    assert_eq!(watermark("fix typo"), None);
    assert_eq!(watermark("x\n\nRaft-Last-Index: twelve"), None);
    assert_eq!(watermark(&init_message()), Some(0));
}

#[test]
fn hostile_paths_are_refused() {
    for p in [
        "src/main.rs",
        ".messages/../etc/passwd",
        ".messages/general/2025/11/22/1-2.txt",
        ".messages/General/2025/11/22/1-2.jsonl",
        ".messages/general/2025/13/22/1-2.jsonl",
        ".messages/general/2025/11/22/2-1.jsonl",
        ".messages/general/2025/11/22/0-1.jsonl",
        ".messages/general/2025/11/22/1-99999999999999999999999.jsonl",
        ".messages/general/x/2025/11/22/1-2.jsonl",
        ".messagesX/general/2025/11/22/1-2.jsonl",
    ] {
        assert!(parse_batch_path(p).is_err(), "{p} accepted");
    }
    assert!(parse_batch_path(".messages/general/2025/11/22/1-2.jsonl").is_ok());
}

#[test]
fn hostile_files_are_refused_with_the_line() {
    let path = ".messages/general/2025/11/22/000000000003-000000000004.jsonl";
    let good = render(&[
        post(3, "general", "ana", DAY1, "a"),
        post(4, "general", "ana", DAY1, "b"),
    ])
    .unwrap()
    .files
    .remove(0)
    .1;
    assert_eq!(parse_batch(path, &good).unwrap().len(), 2);
    let text = String::from_utf8(good.clone()).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json\n".to_vec(), ":1:"),
        (
            text.replace("\"general\"", "\"random\"").into_bytes(),
            "conversation",
        ),
        (
            text.replace("\"index\":4", "\"index\":9").into_bytes(),
            "outside",
        ),
        (
            text.replace("\"index\":4", "\"index\":3").into_bytes(),
            "does not follow",
        ),
        (
            text.replace("\"sender\":\"ana\"", "\"sender\":\"a/b\"")
                .into_bytes(),
            ":1:",
        ),
        (
            text.replace("\"kind\":\"post\"", "\"kind\":\"nuke\"")
                .into_bytes(),
            ":1:",
        ),
        (
            text.replace("\"term\"", "\"extra\":1,\"term\"")
                .into_bytes(),
            ":1:",
        ),
        (
            text.lines().next().unwrap().as_bytes().to_vec(),
            "last line",
        ),
        (Vec::new(), "empty"),
        (vec![0xff, 0xfe], "UTF-8"),
        (vec![b' '; MAX_BATCH_FILE_BYTES + 1], "limit"),
    ];
    for (bytes, want) in cases {
        let err = parse_batch(path, &bytes).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} does not mention {want:?}");
        assert!(err.starts_with(path), "{err:?} does not name the file");
    }
}

#[test]
fn config_round_trips_and_is_checked() {
    let c = RoomConfig::default();
    assert_eq!(RoomConfig::from_bytes(&c.to_bytes()).unwrap(), c);
    let text = String::from_utf8(c.to_bytes()).unwrap();
    assert!(text.contains("\"commit_interval_secs\": 600"));
    for bad in [
        text.replace("\"voters\": 3", "\"voters\": 4"),
        text.replace("\"version\": 1", "\"version\": 2"),
        text.replace("600", "0"),
        "[]".to_owned(),
    ] {
        assert!(RoomConfig::from_bytes(bad.as_bytes()).is_err(), "{bad}");
    }
    assert!(RoomConfig::from_bytes(&vec![b' '; MAX_CONFIG_BYTES + 1]).is_err());
}

#[test]
fn settings_from_the_log_replace_only_what_they_set_and_record_their_index() {
    let c = RoomConfig::default();
    // A file `skygit init` wrote has no index.
    assert!(!String::from_utf8(c.to_bytes())
        .unwrap()
        .contains("settings_index"));
    let s = skygit_consensus::model::RoomSettings {
        commit_interval_secs: Some(90),
        voters: None,
        changed_index: 42,
        changed_at: 0,
    };
    let with = c.with_settings(&s);
    assert_eq!(
        (with.commit_interval_secs, with.voters, with.settings_index),
        (90, c.voters, 42)
    );
    assert_eq!(with.media, c.media);
    let text = String::from_utf8(with.to_bytes()).unwrap();
    assert!(text.contains("\"settings_index\": 42"), "{text}");
    assert_eq!(RoomConfig::from_bytes(text.as_bytes()).unwrap(), with);
    // Settings never changed through the log leave the file alone.
    assert_eq!(
        c.with_settings(&skygit_consensus::model::RoomSettings::default()),
        c
    );
}

#[test]
fn a_commit_names_the_epoch_of_the_group_that_made_it() {
    // The first group's commits carry no trailer: epoch 0, as before.
    assert_eq!(
        founding_message(7, 0, 0, 0),
        "skygit: node 7 starts the room's raft group\n\nRaft-Last-Index: 0\nGroup-Founder: 7\n"
    );
    assert_eq!(group_epoch(&founding_message(7, 0, 0, 0)), 0);
    assert_eq!(group_epoch(&init_message()), 0);
    // A later group's founding keeps the branch's watermark.
    let m = founding_message(9, 3, 130, 120);
    assert_eq!(
        (founder(&m), group_epoch(&m), group_base(&m), watermark(&m)),
        (Some(9), 3, 130, Some(120))
    );
    assert_eq!(group_base(&founding_message(7, 0, 5, 0)), 0);
    let marked = with_epoch(settings_message(&RoomConfig::default(), 120, 4), 3);
    assert_eq!(group_epoch(&marked), 3);
    assert_eq!(watermark(&marked), Some(120));
    assert_eq!(
        with_epoch("x\n\nRaft-Last-Index: 1\n".into(), 0),
        "x\n\nRaft-Last-Index: 1\n"
    );
    // A trailer that is not a number is no epoch (epoch 0).
    assert_eq!(group_epoch("x\n\nGroup-Epoch: two\n"), 0);
    assert_eq!(
        group_epoch("x\n\nGroup-Epoch: 99999999999999999999999\n"),
        0
    );
    // Only the trailer paragraph counts.
    assert_eq!(group_epoch("Group-Epoch: 5\n\nRaft-Last-Index: 1\n"), 0);
}

#[test]
fn a_posts_attachments_round_trip_and_bad_ones_are_refused() {
    let path = ".messages/general/2025/11/22/000000000003-000000000003.jsonl";
    let mut p = post(3, "general", "ana", DAY1, "see file");
    let file = skygit_consensus::model::Attachment {
        sha256: skygit_consensus::model::ContentHash::from_digest([0xab; 32]),
        size: 1234,
        name: "<img src=x onerror=alert(1)>.png".into(),
        media_type: "image/png".into(),
    };
    if let ChangeKind::Post { attachments, .. } = &mut p.kind {
        attachments.push(file.clone());
    }
    let bytes = render(std::slice::from_ref(&p)).unwrap().files.remove(0).1;
    assert_eq!(parse_batch(path, &bytes).unwrap(), vec![p]);
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\"attachments\":[{\"sha256\":\"abab"));
    // A line without files has no `attachments` field at all.
    let plain = render(&[post(3, "general", "ana", DAY1, "x")])
        .unwrap()
        .files;
    assert!(!String::from_utf8_lossy(&plain[0].1).contains("attachments"));
    let hash = file.sha256.as_str();
    let cases = [
        (text.replace(hash, &hash.to_uppercase()), "sha256"),
        (text.replace(hash, &hash[..60]), "sha256"),
        (
            text.replace("\"size\":1234", "\"size\":99999999999999"),
            "attachment size",
        ),
        (text.replace("image/png", "image"), "media type"),
        (text.replace("\"size\":1234", "\"size\":-1"), ":1:"),
    ];
    for (bad, want) in cases {
        let err = parse_batch(path, bad.as_bytes()).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} does not mention {want:?}");
    }
}

#[test]
fn media_settings_pick_a_store_by_size_and_are_checked() {
    let old = br#"{"version":1,"commit_interval_secs":600,"voters":3,
        "media":{"storage":"git-lfs"},"encryption":{"enabled":false}}"#;
    let c = RoomConfig::from_bytes(old).expect("a config without the new fields reads");
    assert_eq!(c.media, MediaConfig::default());
    assert_eq!(c.media.storage_for(10), MediaStorage::GitLfs);
    let mut m = MediaConfig {
        storage: MediaStorage::External,
        small_storage: Some(MediaStorage::Git),
        small_max_bytes: 1000,
        s3: Some(S3Location {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "team-files".into(),
            prefix: "room/".into(),
            region: "eu-west-1".into(),
        }),
        ..MediaConfig::default()
    };
    assert_eq!(m.validate(), Ok(()));
    assert_eq!(m.storage_for(1000), MediaStorage::Git);
    assert_eq!(m.storage_for(1001), MediaStorage::External);
    let with = RoomConfig {
        media: m.clone(),
        ..RoomConfig::default()
    };
    assert_eq!(
        RoomConfig::from_bytes(&with.to_bytes()).expect("reads"),
        with
    );
    let bad = |f: &dyn Fn(&mut MediaConfig)| {
        let mut b = m.clone();
        f(&mut b);
        b.validate().expect_err("refused")
    };
    assert!(bad(&|b| b.s3 = None).contains("needs media.s3"));
    assert!(bad(&|b| b.small_max_bytes = b.max_bytes + 1).contains("small_max_bytes"));
    assert!(bad(&|b| b.max_bytes = 0).contains("max_bytes"));
    let s3 = |f: &dyn Fn(&mut S3Location)| bad(&|b| f(b.s3.as_mut().expect("s3")));
    assert!(s3(&|l| l.bucket = "UPPER".into()).contains("bucket"));
    assert!(s3(&|l| l.prefix = "../up".into()).contains("prefix"));
    assert!(s3(&|l| l.endpoint = "file:///etc".into()).contains("endpoint"));
    assert!(s3(&|l| l.region = "a b".into()).contains("region"));
    m.s3 = None;
    m.storage = MediaStorage::GitLfs;
    m.lfs_url = Some("ftp://x".into());
    assert!(m.validate().expect_err("refused").contains("lfs_url"));
    let unknown = br#"{"version":1,"commit_interval_secs":600,"voters":3,
        "media":{"storage":"git-lfs","secret_key":"x"},"encryption":{"enabled":false}}"#;
    assert!(
        RoomConfig::from_bytes(unknown).is_err(),
        "no credentials in the repository"
    );
}
