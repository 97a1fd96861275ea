//! Tests of the configuration (in their own file to keep `mod.rs` under the line limit).

use super::*;

fn write(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A file under the system temp dir, removed on drop.
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("relaymesh-config-{}.toml", rand::random::<u64>()));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn empty_config_serves_the_development_app() {
    // Env-reading tests share the process environment: take figment's lock.
    figment::Jail::expect_with(|_| {
        let config = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 6001);
        assert_eq!(config.apps.len(), 1);
        assert_eq!(config.apps[0].key, "app-key");
        Ok(())
    });
}

#[test]
fn file_and_flag_layers() {
    // Env-reading tests share the process environment: take figment's lock.
    figment::Jail::expect_with(|_| {
        let file = write(
            "listen = \"127.0.0.1:7777\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\nmax_connections = 5\n",
        );
        let config = Config::load(Some(&file.0), Overrides::default()).unwrap();
        assert_eq!(config.listen.port(), 7777);
        assert_eq!(config.apps[0].max_connections, Some(5));
        assert_eq!(config.apps[0].max_presence_members, 100);
        let flag = SocketAddr::from(([127, 0, 0, 1], 8888));
        assert_eq!(
            Config::load(
                Some(&file.0),
                Overrides {
                    listen: Some(flag),
                    ..Overrides::default()
                }
            )
            .unwrap()
            .listen,
            flag
        );
        Ok(())
    });
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "node.toml",
            "listen = \"127.0.0.1:7000\"\nactivity_timeout_secs = 60\n",
        )?;
        jail.set_env("RELAYMESH_ACTIVITY_TIMEOUT_SECS", "90");
        jail.set_env("RELAYMESH_WEBHOOKS__BATCH_MS", "7");
        jail.set_env(
            "RELAYMESH_CONTROL_JOIN_TOKEN",
            "belongs-to-the-control-plane",
        );
        let path = jail.directory().join("node.toml");
        let config = Config::load(Some(&path), Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(config.activity_timeout_secs, 90);
        assert_eq!(config.webhooks.batch_ms, 7);
        assert_eq!(config.listen.port(), 7000);
        let flag = SocketAddr::from(([127, 0, 0, 1], 7100));
        let overrides = Overrides {
            listen: Some(flag),
            region: Some("eu".into()),
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), overrides).map_err(|e| e.to_string())?;
        assert_eq!(
            (config.listen, config.control_plane.region.as_str()),
            (flag, "eu")
        );
        jail.set_env("RELAYMESH_LISTN", "127.0.0.1:1");
        let err = Config::load(Some(&path), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn"), "{err}");
        Ok(())
    });
}

/// What Kubernetes injects into a pod for Services named `relaymesh` and
/// `relaymesh-control` (the second with a named port) and the UDP port of `relaymesh-mesh`.
const SERVICE_VARIABLES: [(&str, &str); 13] = [
    ("RELAYMESH_SERVICE_HOST", "10.0.0.2"),
    ("RELAYMESH_PORT", "tcp://10.0.0.2:6001"),
    ("RELAYMESH_CONTROL_SERVICE_HOST", "10.0.0.1"),
    ("RELAYMESH_CONTROL_SERVICE_PORT", "7000"),
    ("RELAYMESH_CONTROL_SERVICE_PORT_GRPC", "7000"),
    ("RELAYMESH_CONTROL_PORT", "tcp://10.0.0.1:7000"),
    ("RELAYMESH_CONTROL_PORT_7000_TCP", "tcp://10.0.0.1:7000"),
    ("RELAYMESH_CONTROL_PORT_7000_TCP_PROTO", "tcp"),
    ("RELAYMESH_CONTROL_PORT_7000_TCP_PORT", "7000"),
    ("RELAYMESH_CONTROL_PORT_7000_TCP_ADDR", "10.0.0.1"),
    ("RELAYMESH_MESH_PORT_7100_UDP", "udp://10.0.0.3:7100"),
    ("RELAYMESH_MESH_PORT_7100_UDP_ADDR", "10.0.0.3"),
    ("relaymesh_mesh_service_host", "10.0.0.3"),
];

#[test]
fn kubernetes_service_variables_are_ignored_and_misspelt_settings_still_fatal() {
    figment::Jail::expect_with(|jail| {
        for (name, value) in SERVICE_VARIABLES {
            jail.set_env(name, value);
        }
        jail.set_env("RELAYMESH_DRAIN_TIMEOUT_SECS", "45");
        let config = Config::load(None, Overrides::default()).map_err(|e| e.to_string())?;
        assert_eq!(config.drain_timeout_secs, 45);
        let mut ignored = service_link_variables(std::env::vars_os().map(|(name, _)| name));
        ignored.sort();
        let mut expected: Vec<_> = SERVICE_VARIABLES.iter().map(|(n, _)| *n).collect();
        expected.sort();
        assert_eq!(ignored, expected);
        // Only the environment is forgiving: the same key in the file stops the node.
        jail.create_file("node.toml", "control_port = \"tcp://10.0.0.1:7000\"\n")?;
        let err = Config::load(
            Some(&jail.directory().join("node.toml")),
            Overrides::default(),
        )
        .map_err(|e| e.to_string())
        .expect_err("an unknown file key");
        assert!(err.contains("control_port"), "{err}");
        jail.set_env("RELAYMESH_DRAIN_TIMEOUT_SEC", "45");
        let err = Config::load(None, Overrides::default())
            .map_err(|e| e.to_string())
            .expect_err("a misspelt variable");
        assert!(err.contains("drain_timeout_sec"), "{err}");
        Ok(())
    });
}

/// Every key a variable can set (`__` between nested keys), from the defaults.
fn setting_keys(value: &serde_json::Value, prefix: &str, keys: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = value {
        for (name, value) in map {
            let key = format!("{prefix}{name}");
            setting_keys(value, &format!("{key}__"), keys);
            keys.push(key);
        }
    }
}

#[test]
fn no_setting_has_the_shape_of_a_service_variable() {
    let mut keys = Vec::new();
    setting_keys(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut keys,
    );
    assert!(keys.iter().any(|k| k == "mesh__advertise"), "{keys:?}");
    for key in keys {
        assert!(!is_service_link(&key), "setting {key} would be ignored");
    }
    for (name, _) in SERVICE_VARIABLES {
        assert!(is_service_link(&name[ENV_PREFIX.len()..]), "{name}");
    }
}

#[test]
fn a_cluster_node_must_advertise_reachable_addresses() {
    let load = |toml: &str| {
        let file = write(&format!(
            "{toml}[control_plane]\nendpoint = \"http://127.0.0.1:7000\"\n"
        ));
        Config::load(Some(&file.0), Overrides::default()).map_err(|e| e.to_string())
    };
    let mesh = "listen = \"0.0.0.0:7100\"\ndev_ca_dir = \"ca\"\n";
    figment::Jail::expect_with(|_| {
        // Standalone, 0.0.0.0 is fine: nothing is reported anywhere.
        let file = write("listen = \"0.0.0.0:6001\"\n");
        assert!(Config::load(Some(&file.0), Overrides::default()).is_ok());
        let refused = [
            ("listen = \"0.0.0.0:6001\"\n", "advertise must be set"),
            ("listen = \"[::]:6001\"\n", "advertise must be set"),
            (
                "advertise = \"0.0.0.0:6001\"\n",
                "advertise \"0.0.0.0:6001\" is unspecified",
            ),
            (
                "advertise = \"eu-1.example.com\"\n",
                "advertise \"eu-1.example.com\" is not host:port",
            ),
            ("advertise = \"10.0.0.5:0\"\n", "is unspecified"),
        ];
        for (toml, message) in refused {
            let err = load(toml).expect_err(toml);
            assert!(err.contains(message), "{toml}: {err}");
        }
        let refused = [
            (String::new(), "mesh.advertise must be set"),
            (
                "advertise = \"[::]:7100\"\n".into(),
                "mesh.advertise \"[::]:7100\" is unspecified",
            ),
            (
                "advertise = \"node-1:7100\"\n".into(),
                "mesh.advertise \"node-1:7100\" is not ip:port",
            ),
        ];
        for (advertise, message) in refused {
            let err = load(&format!("[mesh]\n{mesh}{advertise}")).expect_err(message);
            assert!(err.contains(message), "{advertise}: {err}");
        }
        let config = load(&format!(
            "listen = \"0.0.0.0:6001\"\nadvertise = \"eu-1.example.com:443\"\n\
             [mesh]\n{mesh}advertise = \"10.0.0.5:7100\"\n"
        ))
        .map_err(figment::Error::from)?;
        assert_eq!(config.advertise.as_deref(), Some("eu-1.example.com:443"));
        assert_eq!(config.mesh.advertise.as_deref(), Some("10.0.0.5:7100"));
        // Loopback (the tests' own clusters) needs no advertise setting.
        let config = load("listen = \"127.0.0.1:0\"\n").map_err(figment::Error::from)?;
        assert_eq!(config.advertise, None);
        Ok(())
    });
}

#[test]
fn the_deploy_example_loads() {
    // Env-reading tests share the process environment: take figment's lock.
    figment::Jail::expect_with(|_| {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/relaymesh-node.toml");
        let config = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(config.apps[0].key, "app-key");
        assert_eq!(config.webhooks.vacate_delay_ms, 3000);
        Ok(())
    });
}

#[test]
fn unknown_keys_and_bad_values_are_fatal() {
    // Env-reading tests share the process environment: take figment's lock.
    figment::Jail::expect_with(|_| {
        let file = write("listn = \"127.0.0.1:7777\"\n");
        let err = Config::load(Some(&file.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn"), "{err}");
        let file = write("activity_timeout_secs = \"soon\"\n");
        let err = Config::load(Some(&file.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("activity_timeout_secs"), "{err}");
        let file = write("[[apps]]\nid = \"1\"\nkey = \"k\"\n");
        assert!(Config::load(Some(&file.0), Overrides::default()).is_err());
        let file = write("[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=\"s\"\n[[apps]]\nid=\"2\"\nkey=\"k\"\nsecret=\"t\"\n");
        assert!(Config::load(Some(&file.0), Overrides::default())
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(Config::load(
            Some(std::path::Path::new("/nonexistent.toml")),
            Overrides::default()
        )
        .is_err());
        // With a control plane, the file's apps are served beside the registry's.
        let file = write("[control_plane]\nendpoint = \"http://127.0.0.1:7000\"\n[[apps]]\nid=\"1\"\nkey=\"k\"\nsecret=\"s\"\n");
        let config = Config::load(Some(&file.0), Overrides::default()).unwrap();
        assert_eq!(config.apps.len(), 1);
        let file = write("[mesh]\nlisten = \"127.0.0.1:0\"\n");
        let err = Config::load(Some(&file.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("control_plane.endpoint"), "{err}");
        let file = write("[control_plane]\nendpoint = \"http://127.0.0.1:7000\"\n[mesh]\nlisten = \"127.0.0.1:0\"\n");
        let err = Config::load(Some(&file.0), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("certs ca"), "{err}");
        Ok(())
    });
}
