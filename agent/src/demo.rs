//! `raft3d demo`: a working 3-node farm on loopback in one command. Each node is a separate
//! `raft3d` process (so a user can kill one and watch the others carry on); Ctrl-C stops all.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::DemoArgs;

struct Farm {
    children: Vec<(String, Child)>,
}

impl Drop for Farm {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if matches!(child.try_wait(), Ok(Some(_))) {
                continue; // already gone (its pid may belong to someone else by now)
            }
            // SIGTERM lets each node stop cleanly; SIGKILL only if it does not.
            // SAFETY: kill(2) with a pid we spawned and a valid signal number.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        for (name, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("{name} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// What a run of the demo left in its data directory: the ports its nodes use.
const PORTS_FILE: &str = "demo-ports.txt";

/// Checks that no port the farm needs is taken, naming the first one that is.
fn ports_free(ports: &[u16]) -> anyhow::Result<()> {
    for &p in ports {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", p)) {
            anyhow::bail!(
                "port {p} on 127.0.0.1 is not free ({e}); stop what uses it, or move the demo \
                 with --http-port and --raft-port (and a new --data directory)"
            );
        }
    }
    Ok(())
}

/// Starts the farm, prints how to use it, and runs until Ctrl-C.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut farm = Farm {
        children: Vec::new(),
    };
    let samples = args.samples.clone().unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/gcode")
    });
    let samples = samples.canonicalize().unwrap_or(samples);
    let http = |i: u16| format!("127.0.0.1:{}", args.http_port + i);
    let raft = |i: u16| format!("127.0.0.1:{}", args.raft_port + i);
    std::fs::create_dir_all(&args.data)?;
    // A farm from an earlier run comes back with its state; its members know each other by
    // the ports they had, so the ports must stay the same.
    let ports = format!("{} {}", args.http_port, args.raft_port);
    let earlier = std::fs::read_to_string(args.data.join(PORTS_FILE)).ok();
    let existing = args.data.join("node1").join("raft-log.redb").exists();
    if existing {
        if let Some(old) = earlier.as_deref().map(str::trim).filter(|o| *o != ports) {
            let (h, r) = old.split_once(' ').unwrap_or((old, "?"));
            anyhow::bail!(
                "{} holds a demo farm whose nodes use --http-port {h} --raft-port {r}; run with \
                 those, or give a new --data directory (or delete {} to start over)",
                args.data.display(),
                args.data.display()
            );
        }
    }
    ports_free(&[
        args.http_port,
        args.http_port + 1,
        args.http_port + 2,
        args.raft_port,
        args.raft_port + 1,
        args.raft_port + 2,
    ])?;
    std::fs::write(args.data.join(PORTS_FILE), &ports)?;
    let mut commands = Vec::new();
    for i in 0..3u16 {
        let name = format!("node{}", i + 1);
        let mut cmd = Command::new(&exe);
        let mut shown = vec![
            "-id".to_string(),
            name.clone(),
            "-http".into(),
            http(i),
            "-raft".into(),
            raft(i),
            "-data".into(),
            args.data.display().to_string(),
        ];
        if i == 0 {
            shown.push("-bootstrap".into());
        } else {
            shown.extend(["-join".to_string(), http(0)]);
        }
        // Each node drives one virtual printer that prints real G-code from the samples.
        let config = args.data.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "gcode_dir = {:?}\n\n[[printers]]\nid = \"virtual-{}\"\ncompany = \"Raft3D\"\nmodel = \"Virtual MK\"\nconnection = {{ kind = \"virtual\", speed = {} }}\n",
                samples.display().to_string(),
                i + 1,
                args.speed
            ),
        )?;
        shown.extend(["--config".to_string(), config.display().to_string()]);
        cmd.args(&shown).stdin(Stdio::null());
        // The nodes stop when the demo dies, even by SIGKILL: no farm is left behind.
        // SAFETY: prctl(2) in the child between fork and exec, with constant arguments.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(args.data.join(format!("{name}.log")))?;
        cmd.stderr(log);
        farm.children.push((name, cmd.spawn()?));
        commands.push(format!("{} {}", exe.display(), shown.join(" ")));
        // A new farm grows from node1; an existing one needs a quorum back before anyone leads.
        if i == 0 && !existing {
            wait_ready(&http(0), 1, Duration::from_secs(20))?;
        }
    }
    wait_ready(&http(0), 3, Duration::from_secs(30))?;
    for i in 0..3u16 {
        let (name, child) = &mut farm.children[i as usize];
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "{name} exited ({status}); see {}/{name}.log",
                args.data.display()
            );
        }
        wait_ready(&http(i), 3, Duration::from_secs(20))?;
    }

    println!(
        "Raft3D demo farm is up: 3 nodes on loopback (logs in {}/nodeN.log){}\n",
        args.data.display(),
        if existing {
            ", with the state of the last run"
        } else {
            ""
        }
    );
    for i in 0..3u16 {
        println!(
            "  node{}  http://{}  peers {}  pid {}",
            i + 1,
            http(i),
            raft(i),
            farm.children[i as usize].1.id()
        );
    }
    let h = http(1);
    println!("\nTry (any node answers; writes to followers are forwarded):");
    println!("  curl -s http://{h}/cluster/status");
    println!("  curl -s -XPOST http://{h}/api/v1/filaments -d '{{\"id\":\"f1\",\"type\":\"PLA\",\"color\":\"red\",\"total_weight_in_grams\":1000}}'");
    println!("  curl -s -XPOST http://{h}/api/v1/print_jobs -d '{{\"id\":\"j1\",\"printer_id\":\"virtual-2\",\"filament_id\":\"f1\",\"filepath\":\"cube.gcode\",\"print_weight_in_grams\":5.02}}'");
    println!("  curl -s -XPOST 'http://{h}/api/v1/print_jobs/j1/status?status=running'");
    println!("  curl -s http://{h}/api/v1/printers/virtual-2/status      # progress; Done is proposed by the printer's agent");
    println!("  curl -s http://{}/api/v1/filaments/f1                      # 994.98 g left once the job is Done", http(2));
    println!(
        "\nEach node drives a virtual printer (virtual-1..3) printing files from {}.",
        samples.display()
    );
    println!("\nKill a node (kill -9 <pid>) and the others keep serving. Ctrl-C stops the farm.");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut gone = [false; 3];
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut watch = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r,
                _ = term.recv() => return Ok(()),
                _ = watch.tick() => {}
            }
            // Say when a node dies, and how to bring it back.
            for (i, (name, child)) in farm.children.iter_mut().enumerate() {
                if gone[i] {
                    continue;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    gone[i] = true;
                    println!("\n{name} exited ({status}); the others carry on. To bring it back, in another terminal:\n  {}", commands[i]);
                }
            }
        }
    })?;
    println!("\nstopping the farm...");
    drop(farm);
    Ok(())
}

/// Polls `/cluster/status` until `voters` voters and a leader are reported.
fn wait_ready(http: &str, voters: usize, limit: Duration) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(r) = client
                .get(format!("http://{http}/cluster/status"))
                .send()
                .await
            {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    let n = v["members"]
                        .as_array()
                        .map(|m| m.iter().filter(|x| x["role"] == "voter").count())
                        .unwrap_or(0);
                    if n >= voters && !v["leader"].is_null() {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("the demo farm did not come up within {limit:?}; see the node logs")
    })
}
