//! Two nodes on one machine: two network namespaces joined by a veth pair (addresses only inside
//! them), each with its own hostname and node-local directory (a private mount namespace binds it over the
//! same path, which is also the node's TMPDIR), 2 ranks on each, started by OpenMPI's `mpirun`
//! through an rsh agent that enters the other namespace. The S3 server (moto) runs inside the
//! first namespace. Exercised with more than one node: node-local ranks, the per-node data cache
//! (each node fetches every shard once) and the per-node checkpoint download on resume (bit-
//! identical to an uninterrupted run).
//!
//! Needs root (network and mount namespaces); skipped with the reason printed otherwise.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use common::{python_path, repo, text};

/// The two namespaces, removed on drop (with the veth pair and anything still inside).
struct Nodes {
    ns: [String; 2],
    ip: [String; 2],
    subnet: String,
    /// The node-local directories and the path each is bound over.
    dirs: [PathBuf; 2],
    mount: PathBuf,
    agent: PathBuf,
    moto: Option<Child>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if let Some(m) = &mut self.moto {
            let _ = m.kill();
            let _ = m.wait();
        }
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), text(&o).1.trim()))
    }
}

impl Nodes {
    fn new(root: &Path) -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let net = 20 + id % 200;
        let ns = [format!("sdA{id}"), format!("sdB{id}")];
        let ip_ = [format!("10.{net}.7.1"), format!("10.{net}.7.2")];
        let dirs = [root.join("node-a"), root.join("node-b")];
        let mount = root.join("node");
        for d in dirs.iter().chain([&mount]) {
            std::fs::create_dir_all(d.join("tmp")).map_err(|e| e.to_string())?;
        }
        let agent = root.join("agent.sh");
        let mut nodes = Self {
            ns: ns.clone(),
            ip: ip_.clone(),
            subnet: format!("10.{net}.7.0/24"),
            dirs,
            mount,
            agent,
            moto: None,
        };
        ip(&["netns", "add", &ns[0]])?;
        ip(&["netns", "add", &ns[1]])?;
        let (va, vb) = (format!("sva{id}"), format!("svb{id}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        for (v, n, a) in [(&va, &ns[0], &ip_[0]), (&vb, &ns[1], &ip_[1])] {
            ip(&["link", "set", v, "netns", n])?;
            ip(&["-n", n, "addr", "add", &format!("{a}/24"), "dev", v])?;
            ip(&["-n", n, "link", "set", v, "up"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        // The rsh agent OpenMPI calls as `agent HOST COMMAND...`: enter HOST's network namespace
        // and new mount and UTS namespaces (its own hostname: with one hostname for both nodes
        // OpenMPI's locality is wrong and its shared-memory transport crashes), bind its
        // node-local directory, run the command there.
        let script = format!(
            "#!/bin/sh\nhost=$1; shift\ncase \"$host\" in\n  {a}) ns={na}; dir={da} ;;\n  {b}) ns={nb}; dir={db} ;;\n  *) echo \"agent: unknown host $host\" >&2; exit 1 ;;\nesac\nexec ip netns exec \"$ns\" unshare -m -u --propagation private sh -c 'hostname \"$0\" && mount --bind \"$1\" \"$2\" && exec sh -c \"$3\"' \"$ns\" \"$dir\" {m} \"$*\"\n",
            a = ip_[0],
            b = ip_[1],
            na = ns[0],
            nb = ns[1],
            da = nodes.dirs[0].display(),
            db = nodes.dirs[1].display(),
            m = nodes.mount.display(),
        );
        std::fs::write(&nodes.agent, script).map_err(|e| e.to_string())?;
        Command::new("chmod")
            .arg("+x")
            .arg(&nodes.agent)
            .status()
            .map_err(|e| e.to_string())?;
        // moto inside node A, on its address.
        let moto = Command::new("ip")
            .args(["netns", "exec", &ns[0]])
            .arg(python_path().with_file_name("moto_server"))
            .args(["-H", &ip_[0], "-p", "5000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        nodes.moto = Some(moto);
        for bucket in ["data", "runs"] {
            let mut ok = false;
            for _ in 0..100 {
                let o = nodes.in_node_a(&format!(
                    "python3 -c \"import urllib.request as u; u.urlopen(u.Request('http://{}:5000/{bucket}', method='PUT'))\"",
                    ip_[0]
                ));
                if o.status.success() {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if !ok {
                return Err("moto did not start inside the namespace".into());
            }
        }
        Ok(nodes)
    }

    /// `sh -c CMD` on node A (its namespaces and node-local directory), from the repository.
    fn in_node_a(&self, cmd: &str) -> Output {
        Command::new(&self.agent)
            .current_dir(repo())
            .arg(&self.ip[0])
            .arg(cmd)
            .output()
            .unwrap()
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", format!("http://{}:5000", self.ip[0])),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing-key-id".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret".into()),
            ("TMPDIR", self.mount.join("tmp").display().to_string()),
            ("OMPI_ALLOW_RUN_AS_ROOT", "1".into()),
            ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1".into()),
        ]
    }

    /// `mpirun` of 4 ranks, 2 per node, started on node A; `args` after the binary.
    fn mpirun(&self, bin: &str, args: &[String]) -> Output {
        let env = self.env();
        let hosts = self.mount.parent().unwrap().join("hosts");
        std::fs::write(
            &hosts,
            format!("{} slots=2\n{} slots=2\n", self.ip[0], self.ip[1]),
        )
        .unwrap();
        let mut cmd = format!(
            "mpirun -n 4 --hostfile {} --map-by ppr:2:node --bind-to none --mca plm_rsh_agent {} --mca btl tcp,self,vader --mca btl_tcp_if_include {s} --mca oob_tcp_if_include {s}",
            hosts.display(),
            self.agent.display(),
            s = self.subnet
        );
        for (k, _) in &env {
            cmd += &format!(" -x {k}");
        }
        cmd += &format!(" {bin}");
        for a in args {
            cmd += &format!(" '{a}'");
        }
        let mut c = Command::new(&self.agent);
        c.current_dir(repo()).arg(&self.ip[0]).arg(cmd);
        for (k, v) in &env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

fn upload(nodes: &Nodes, dir: &Path, url: &str) {
    let mut cmd = String::new();
    for (k, v) in nodes.env() {
        cmd += &format!("{k}={v} ");
    }
    cmd += &format!(
        "{} data upload {} {url}",
        syncdiff_devkit::workspace_bin("syncdiff").display(),
        dir.display()
    );
    let o = nodes.in_node_a(&cmd);
    assert!(o.status.success(), "{:?}", text(&o));
}

fn train_args(steps: u64, ckpt: &str, logs: &Path) -> Vec<String> {
    [
        "--config",
        "configs/debug.yaml",
        "--resume",
        "auto",
        "--set",
        "data.dataset=s3://data/ds",
        "--set",
        &format!("checkpoint.url=s3://runs/{ckpt}"),
        "--set",
        &format!("log.dir={}", logs.display()),
        "--set",
        &format!("train.steps={steps}"),
        "--set",
        "checkpoint.interval=10",
        "--set",
        "dist.cpu_threads=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Shards each rank fetched, from its `data.dataset` line.
fn fetched_by_rank(err: &str) -> Vec<(u32, usize)> {
    err.lines()
        .filter(|l| l.contains("data.dataset s3://data/ds:"))
        .filter_map(|l| {
            let rank = l.strip_prefix("[rank ")?.split('/').next()?.parse().ok()?;
            let n = l
                .split(": ")
                .nth(2)?
                .split(" fetched here")
                .next()?
                .parse()
                .ok()?;
            Some((rank, n))
        })
        .collect()
}

#[test]
fn two_nodes_fill_their_own_caches_once_and_resume_bit_identical_with_per_node_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = match Nodes::new(dir.path()) {
        Ok(n) => n,
        Err(why) => {
            assert!(std::env::var_os("CI").is_none(), "two-node test: {why}");
            println!("two-node test skipped: {why} (needs root for network and mount namespaces)");
            return;
        }
    };
    let ds = common::prepared(dir.path(), "train", &["data.clips_per_shard=1"]);
    upload(&nodes, &ds, "s3://data/ds");
    let logs = dir.path().join("runs");
    let train = env!("CARGO_BIN_EXE_syncdiff-train");

    // Uninterrupted, 30 steps.
    let o = nodes.mpirun(train, &train_args(30, "b", &logs));
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    // Two ranks per node; each node filled its own cache, every shard once per node.
    let by_rank = fetched_by_rank(&err);
    assert_eq!(by_rank.len(), 4, "{err}");
    let node_sum = |ranks: [u32; 2]| -> usize {
        by_rank
            .iter()
            .filter(|(r, _)| ranks.contains(r))
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!((node_sum([0, 1]), node_sum([2, 3])), (4, 4), "{err}");
    for d in &nodes.dirs {
        let cache = d.join("tmp/syncdiff-data-cache");
        let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
            .unwrap_or_else(|e| panic!("{}: {e}", cache.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert!(entries[0].join("manifest.json").exists());
    }
    // A second run on the warm caches fetches nothing (20 steps, then resumed to 30 below).
    let o = nodes.mpirun(train, &train_args(20, "a", &logs));
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(fetched_by_rank(&err).iter().all(|(_, n)| *n == 0), "{err}");
    // Resumed on both nodes: rank 0 and node B's first rank each download the checkpoint
    // into their node's TMPDIR (node B's ranks could not read node A's).
    let o = nodes.mpirun(train, &train_args(30, "a", &logs));
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        out.contains(" from s3://runs/a/step-000000020 at step 20"),
        "{out}"
    );
    let hashes = |run: &str| {
        let o = nodes.in_node_a(&format!(
            "{} {} ckpt inspect s3://runs/{run}/step-000000030",
            nodes
                .env()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            syncdiff_devkit::workspace_bin("syncdiff").display()
        ));
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        out.lines()
            .filter(|l| l.contains(".safetensors"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (ha, hb) = (hashes("a"), hashes("b"));
    assert_eq!(ha.len(), 3, "{ha:?}");
    assert_eq!(ha, hb, "resumed on two nodes != uninterrupted");
}
