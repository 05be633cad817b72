//! Shards without sockets, for tests of the control plane: each thread owns a core and
//! runs its jobs until stopped.

use std::{path::Path, thread::JoinHandle, time::Instant};

use super::*;

pub struct FakeShards {
    pub handles: Vec<ShardHandle>,
    threads: Vec<JoinHandle<()>>,
}

impl FakeShards {
    pub fn start(config: &Config, n: usize) -> Self {
        let cores = crate::cores::Cores::new(config).unwrap();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n {
            let (handle, inbox) = crate::shard::channel(format!("fake-{i}")).unwrap();
            let mut server = cores.server(config, Instant::now()).unwrap();
            threads.push(std::thread::spawn(move || {
                while !inbox.stopping() {
                    inbox.run_jobs(&mut server);
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
            handles.push(handle);
        }
        Self { handles, threads }
    }

    /// Stops shard `i` and waits for its thread.
    pub fn stop(&mut self, i: usize) {
        self.handles[i].stop();
        let t = self.threads.remove(i);
        t.join().unwrap();
    }
}

impl Drop for FakeShards {
    fn drop(&mut self) {
        for h in &self.handles {
            h.stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A loopback relay config with `extra` appended.
pub fn config_text(extra: &str) -> String {
    format!(
        "realm = \"example.org\"\n[[listen]]\naddress = \"127.0.0.1:3478\"\n\
         [auth]\nusers = {{ alice = \"pw\" }}\n{extra}"
    )
}

/// `text` validated as a config file in the current folder.
pub fn parse_config(text: &str) -> Config {
    let file: crate::config::ConfigFile = toml::from_str(text).unwrap();
    file.validate(Path::new(".")).unwrap()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

pub fn control_for(path: &Path, shards: &FakeShards) -> Control {
    let config = crate::config::load(path).unwrap();
    let p = path.to_owned();
    Control::new(
        config,
        Some(path.to_owned()),
        Some(Box::new(move || crate::config::load(&p))),
        shards.handles.clone(),
        Kernel::off(),
        Default::default(),
        XdpStatus {
            configured: AttachMode::Off,
            interfaces: vec![],
            off_reason: Some("test".into()),
            sized_for: 10,
            forwarding_off: None,
        },
    )
}
