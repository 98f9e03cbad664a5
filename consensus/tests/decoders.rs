//! Every decoder of bytes from a peer, fed random and mutated input,
//! returns an error or a value and never panics.

use openraft::vote::RaftLeaderId;
use proptest::prelude::*;
use skygit_consensus::codec::{self, Envelope, EnvelopeKind};
use skygit_consensus::model::{ChatRequest, Command, ConversationId, UserId};
use skygit_consensus::network::{snapshot_chunks, AppendWire, RaftRequest, RaftResponse};
use skygit_consensus::replica::{ChatRpcRequest, ChatRpcResponse};
use skygit_consensus::rpc::RpcFrame;

/// Runs every payload decoder over `bytes`.
fn decode_all(bytes: &[u8]) {
    let _ = codec::decode_frame(bytes);
    let _ = codec::from_bytes::<RpcFrame>(bytes);
    let _ = codec::from_bytes::<RaftRequest>(bytes);
    let _ = codec::from_bytes::<RaftResponse>(bytes);
    let _ = codec::from_bytes::<ChatRpcRequest>(bytes);
    let _ = codec::from_bytes::<ChatRpcResponse>(bytes);
    let _ = codec::from_bytes::<ChatRequest>(bytes);
}

fn sample_request() -> ChatRequest {
    ChatRequest {
        id: ulid::Ulid::from_parts(1_700_000_000_000, 42),
        sender: UserId::new("ana").unwrap(),
        at: 1_700_000_000_000,
        command: Command::Post {
            conversation: ConversationId::general(),
            content: "hello, room".into(),
            attachments: Vec::new(),
        },
        signature: None,
    }
}

/// Valid encodings of each payload type, as seeds for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let chat = codec::to_bytes(&ChatRpcRequest::Propose(sample_request())).unwrap();
    let rpc = codec::to_bytes(&RpcFrame {
        id: 7,
        response: false,
        body: chat.clone(),
    })
    .unwrap();
    let frame = codec::encode_frame(&Envelope {
        kind: EnvelopeKind::Chat,
        from: 1,
        to: 2,
        epoch: 0,
        timestamp: 5,
        payload: rpc.clone(),
    })
    .unwrap();
    let leader = openraft::vote::leader_id_adv::LeaderId::new(3, 1).to_committed();
    let append = codec::to_bytes(&RaftRequest::Append(AppendWire {
        vote: openraft::impls::Vote::new(3, 1),
        prev_log_id: None,
        entries: vec![openraft::Entry {
            log_id: openraft::LogId::new(leader, 9),
            payload: openraft::EntryPayload::Normal(sample_request()),
        }],
        leader_commit: None,
    }))
    .unwrap();
    let vote = openraft::impls::Vote::new(3, 1);
    let meta = skygit_consensus::types::SnapshotMeta::default();
    let chunk = codec::to_bytes(&RaftRequest::SnapshotChunk(
        snapshot_chunks(&vote, &meta, b"snapshot bytes")
            .unwrap()
            .remove(0),
    ))
    .unwrap();
    vec![
        chat,
        rpc,
        frame,
        codec::to_bytes(&sample_request()).unwrap(),
        append,
        chunk,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_valid_payloads_never_panic(
        which in 0usize..6,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = seeds().swap_remove(which);
        for (i, x) in flips {
            let at = i.index(b.len());
            b[at] ^= x;
        }
        decode_all(&b);
        let end = cut.index(b.len() + 1);
        decode_all(&b[..end]);
    }
}

#[test]
fn names_are_checked_while_decoding() {
    // A request whose conversation name is not allowed must not decode.
    let mut bytes = codec::to_bytes(&sample_request()).unwrap();
    let pos = bytes.windows(7).position(|w| w == b"general").unwrap();
    bytes[pos] = b'/';
    assert!(codec::from_bytes::<ChatRequest>(&bytes).is_err());
}
