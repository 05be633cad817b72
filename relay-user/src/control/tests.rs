//! Unit tests of the control plane: reload, refusals, gather and draining on fake shards.

use super::{reload::ReloadError, test_support::*, *};

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-control-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.toml");
    write(&path, text);
    path
}

#[test]
fn reload_applies_runtime_keys_and_keeps_startup_ones() {
    let path = temp_config("apply", &config_text("[limits]\nmax_allocations = 10\n"));
    let shards = FakeShards::start(&crate::config::load(&path).unwrap(), 2);
    let control = control_for(&path, &shards);
    write(
        &path,
        &config_text(
            "[limits]\nmax_allocations = 20\nalternate_servers = [\"203.0.113.60:3478\"]\n\
             drain_timeout = 7\nmax_allocations_per_rest_user = 3\n\
             max_allocations_per_source = 40\nunauthenticated_rate = 5\n\
             unauthenticated_burst = 6\n[admin]\ntoken = \"new\"\n\
             [cluster]\nnodes = [{ turn = \"203.0.113.61:3478\", admin = \"http://192.0.2.61:9641\" }]\n",
        )
        .replace("127.0.0.1:3478", "127.0.0.1:3479"),
    );
    let report = control.reload().unwrap();
    assert_eq!(report.shards_applied, 2);
    assert_eq!(report.restart_needed, vec!["listen"]);
    let c = control.config();
    assert_eq!(c.max_allocations, 20);
    assert_eq!(c.drain_timeout, Duration::from_secs(7));
    assert_eq!(c.admin.token.as_deref(), Some("new"));
    // The poller reads the nodes from the config in force at each round.
    assert_eq!(c.cluster.nodes[0].turn.to_string(), "203.0.113.61:3478");
    // The listener needs a restart: the one in force stays.
    assert_eq!(c.listeners[0].address.port(), 3478);
    let rest_quotas = control.gather(QUERY_TIMEOUT, |s| {
        let l = s.limits();
        (
            l.max_allocations_per_rest_user,
            l.max_allocations_per_source,
        )
    });
    for q in rest_quotas {
        assert_eq!(q, Some((3, 40)), "REST quotas reloaded on every shard");
    }
    let rates = control.gather(QUERY_TIMEOUT, |s| {
        let c = s.config();
        (c.unauthenticated_rate, c.unauthenticated_burst)
    });
    for r in rates {
        assert_eq!(
            r,
            Some((5, 6)),
            "unauthenticated limit reloaded on every shard"
        );
    }
    let alternates = control.gather(QUERY_TIMEOUT, |s| {
        (
            s.config().alternate_servers.clone(),
            s.limits().max_allocations,
        )
    });
    for a in alternates {
        let (alts, max) = a.expect("shard answered");
        assert_eq!(alts, vec!["203.0.113.60:3478".parse().unwrap()]);
        assert_eq!(max, 20);
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn relay_tcp_is_applied_by_a_reload_and_the_rest_of_tcp_is_not() {
    let path = temp_config("relay-tcp", &config_text(""));
    let shards = FakeShards::start(&crate::config::load(&path).unwrap(), 2);
    let control = control_for(&path, &shards);
    let offered = |c: &Control| c.gather(QUERY_TIMEOUT, |s| s.config().relay_tcp);
    assert_eq!(offered(&control), vec![Some(false); 2]);
    write(&path, &config_text("[tcp]\nrelay_tcp = true\n"));
    let report = control.reload().unwrap();
    assert!(
        report.restart_needed.is_empty(),
        "{:?}",
        report.restart_needed
    );
    assert!(control.config().tcp.relay_tcp);
    assert_eq!(offered(&control), vec![Some(true); 2]);
    write(
        &path,
        &config_text("[tcp]\nrelay_tcp = true\nmax_connections = 7\n"),
    );
    let report = control.reload().unwrap();
    assert_eq!(report.restart_needed, vec!["tcp"]);
    assert_eq!(
        control.config().tcp.max_connections,
        crate::config::TcpSettings::default().max_connections
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn bandwidth_limits_need_a_restart() {
    let path = temp_config(
        "bandwidth",
        &config_text("[limits]\nmax_allocations = 10\n"),
    );
    let shards = FakeShards::start(&crate::config::load(&path).unwrap(), 1);
    let control = control_for(&path, &shards);
    write(
        &path,
        &config_text("[limits]\nmax_allocations = 10\nmax_bps_per_user = 800000\n"),
    );
    let report = control.reload().unwrap();
    assert_eq!(report.restart_needed, vec!["limits.max_bps_per_user"]);
    assert_eq!(control.config().max_bps_per_user, 0);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn a_bad_config_or_a_failing_hook_changes_nothing() {
    let path = temp_config("refuse", &config_text("[limits]\nmax_allocations = 10\n"));
    let shards = FakeShards::start(&crate::config::load(&path).unwrap(), 1);
    let control = control_for(&path, &shards);

    write(&path, &config_text("[limits]\nmax_allocations = 0\n"));
    match control.reload() {
        Err(ReloadError::Config(e)) => assert_eq!(e.key, "limits.max_allocations"),
        other => panic!("expected a config error, got {other:?}"),
    }
    control.reload_and_log();
    assert_eq!(control.reloads().1, 1);
    assert!(!control.reloads().2.unwrap().ok);

    control.on_reload(
        "tls",
        Box::new(|_| Err(anyhow::anyhow!("tls.certificate: no such file"))),
    );
    write(&path, &config_text("[limits]\nmax_allocations = 30\n"));
    match control.reload() {
        Err(e @ ReloadError::Hook { .. }) => {
            assert!(e.to_string().contains("tls: tls.certificate"), "{e}")
        }
        other => panic!("expected a hook error, got {other:?}"),
    }
    assert_eq!(control.config().max_allocations, 10);
    let max = control.gather(QUERY_TIMEOUT, |s| s.limits().max_allocations);
    assert_eq!(max, vec![Some(10)]);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn the_demo_has_nothing_to_reload() {
    let (config, _) = crate::cores::demo_config().unwrap();
    let shards = FakeShards::start(&config, 1);
    let control = Control::new(
        config,
        None,
        None,
        shards.handles.clone(),
        Kernel::off(),
        Default::default(),
        XdpStatus::of(&crate::cores::demo_config().unwrap().0, None),
    );
    assert!(matches!(control.reload(), Err(ReloadError::NoConfigFile)));
}

#[test]
fn gather_does_not_wait_for_ended_shards() {
    let path = temp_config("gather", &config_text(""));
    let mut shards = FakeShards::start(&crate::config::load(&path).unwrap(), 3);
    let control = control_for(&path, &shards);
    shards.stop(1);
    let start = Instant::now();
    let got = control.gather(Duration::from_secs(10), |s| s.allocation_count());
    assert_eq!(got, vec![Some(0), None, Some(0)]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(control.allocation_count(), None);

    assert!(!control.start_draining());
    assert!(control.is_draining());
    let draining = control.gather(QUERY_TIMEOUT, |s| s.is_draining());
    assert_eq!(draining, vec![Some(true), None, Some(true)]);
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
