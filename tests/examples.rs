//! The training examples, run as their users run them (cargo builds examples with the tests).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe.parent().and_then(|d| d.parent()).map(|d| d.join("examples").join(name)).expect("target/<profile>/examples");
    assert!(bin.exists(), "{} is missing: `cargo test` builds the examples (or run `cargo build --examples`)", bin.display());
    bin
}

#[test]
fn train_ddp_reaches_the_accuracy_it_promises_after_a_resume() {
    let out = Command::new(example("train_ddp")).env("FLARE_TRAIN_QUIET", "1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "train_ddp failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("part 2: resumed at epoch 20"), "{stdout}");
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("part 2: resumed at epoch 20, trained to 40: test accuracy "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no final accuracy in:\n{stdout}"));
    assert!(acc >= 0.95, "test accuracy {acc}");
}

#[test]
fn torch_parity_passes_and_rejects_bad_arguments() {
    let oracle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/oracles/train");
    assert!(oracle.join("trajectories.json").exists(), "the PyTorch oracle is missing: expected {}", oracle.display());
    let out = Command::new(example("torch_parity"))
        .args(["--oracle", oracle.to_str().unwrap(), "--run", "a_sgd_momentum", "--world-size", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("within 1e-5: OK"), "{stdout}");
    let out =
        Command::new(example("torch_parity")).args(["--oracle", oracle.to_str().unwrap(), "--run", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run `nope`"));
    let out = Command::new(example("torch_parity")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A prerequisite that `.ci/run` installs: under CI its absence fails, elsewhere the test skips.
fn prerequisite(ok: bool, msg: &str) -> bool {
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("skipping: {msg}");
    }
    ok
}

/// A Python with the official `openai` client: `FLARE_OPENAI_PYTHON` (CI sets it) or the venv
/// `.ci/run` makes.
fn openai_python() -> PathBuf {
    std::env::var_os("FLARE_OPENAI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/flare/openai-venv/bin/python"))
}

const OPENAI_CHECK: &str = r#"
import json, math, sys, threading
import openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
items = json.load(open(sys.argv[2]))["items"]
sents = [i["sentence"] for i in items]
def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
worst = 1.0
r = c.embeddings.create(model="all-MiniLM-L6-v2", input=sents)  # the client's default: base64
assert len(r.data) == len(sents) and [d.index for d in r.data] == list(range(len(sents)))
for d, it in zip(r.data, items):
    worst = min(worst, cos(d.embedding, it["embedding_normalized"]))
one = c.embeddings.create(model="all-MiniLM-L6-v2", input=sents[1], encoding_format="float")
worst = min(worst, cos(one.data[0].embedding, items[1]["embedding_normalized"]))
# 32 clients at once, one sentence each: batched together by the server.
got = [None] * 32
def ask(k):
    got[k] = c.embeddings.create(model="all-MiniLM-L6-v2", input=sents[k % len(sents)]).data[0].embedding
ts = [threading.Thread(target=ask, args=(k,)) for k in range(32)]
[t.start() for t in ts]; [t.join() for t in ts]
for k, e in enumerate(got):
    worst = min(worst, cos(e, items[k % len(items)]["embedding_normalized"]))
try:
    c.embeddings.create(model="no-such-model", input="x"); bad = None
except openai.NotFoundError as e:
    bad = str(e)
try:
    c.embeddings.create(model="all-MiniLM-L6-v2", input=[]); empty = None
except openai.BadRequestError as e:
    empty = str(e)
print(json.dumps({"worst": worst, "n": len(r.data), "models": [m.id for m in c.models.list().data],
                  "tokens": r.usage.prompt_tokens, "bad": bad, "empty": empty}))
"#;

#[test]
fn serve_embeddings_answers_the_official_openai_client_with_sentence_transformers_embeddings() {
    use std::io::BufRead;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let oracle = root.join("../shared/oracles/embed/minilm_embeddings.json");
    assert!(oracle.exists(), "the embeddings oracle is missing: expected {}", oracle.display());
    let model = std::env::var_os("FLARE_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("models/all-MiniLM-L6-v2"));
    let python = openai_python();
    if !prerequisite(
        model.join("model.safetensors").exists(),
        &format!("{} is missing: run scripts/fetch-minilm.sh", model.display()),
    ) || !prerequisite(python.exists(), &format!("{} is missing: .ci/run installs the openai client there", python.display()))
    {
        return;
    }
    let mut server = Command::new(example("serve_embeddings"))
        .args(["--model-dir", model.to_str().unwrap(), "--port", "0", "--max-batch-size", "32", "--batch-wait-ms", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_whitespace().find(|w| w.starts_with("http://")).map(|w| w.trim_end_matches("/v1/embeddings").to_string())
        })
        .expect("serve_embeddings printed no URL");
    let out = Command::new(&python).args(["-c", OPENAI_CHECK, &url, oracle.to_str().unwrap()]).output().unwrap();
    // Graceful stop (SIGINT), as a user's Ctrl-C.
    // Safety: the child this test started.
    unsafe { libc::kill(server.id() as i32, libc::SIGINT) };
    let status = server.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the openai client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert!(v["worst"].as_f64().unwrap() >= 0.99999, "{v}");
    assert_eq!(v["models"], serde_json::json!(["all-MiniLM-L6-v2"]));
    assert!(v["tokens"].as_u64().unwrap() > 16);
    assert!(v["bad"].as_str().unwrap().contains("is not served here"), "{v}");
    assert!(v["empty"].as_str().unwrap().contains("must not be an empty array"), "{v}");
    assert!(status.success(), "serve_embeddings did not exit cleanly on SIGINT: {status}");
}
