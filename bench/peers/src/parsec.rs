//! A Parsec service (PKCS#11 provider) on the benchmark's SoftHSM token, and its clients.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custody_testkit::{toml_str, Hsm, SOFTHSM_MODULE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parsec_client::core::interface::operations::psa_algorithm::{
    Algorithm, AsymmetricSignature, Hash, SignHash,
};
use parsec_client::core::interface::operations::psa_key_attributes::{
    Attributes, Lifetime, Policy, Type, UsageFlags,
};
use parsec_client::BasicClient;

/// The signature algorithm every path uses: RSA PKCS#1 v1.5 over a SHA-256 digest.
pub fn rsa_pkcs1v15_sha256() -> AsymmetricSignature {
    AsymmetricSignature::RsaPkcs1v15Sign {
        hash_alg: SignHash::Specific(Hash::Sha256),
    }
}

/// One Parsec process with its own directory, config and socket.
pub struct Parsec {
    /// How the table names it.
    pub label: String,
    /// The generated config.toml, as written.
    pub config: String,
    socket: PathBuf,
    child: Child,
    paused: bool,
}

impl Parsec {
    /// Writes `dir/config.toml` (Unix socket listener, Unix peer credentials, on-disk key info
    /// manager under `dir`, the PKCS#11 provider on `hsm`'s token in `slot`) and starts `bin` on
    /// it; returns once it answers `ping`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        hsm: &Hsm,
        slot: u64,
        idle_sleep_ms: Option<u64>,
        label: &str,
    ) -> Parsec {
        fs::create_dir_all(dir.join("mappings")).expect("Parsec directory");
        let socket = dir.join("parsec.sock");
        let sleep = idle_sleep_ms
            .map(|ms| format!("idle_listener_sleep_duration = {ms}\n"))
            .unwrap_or_default();
        let render = |pin: &str| {
            format!(
                "[core_settings]\n\
             # The benchmark runs as root.\n\
             allow_root = true\n\
             log_level = \"error\"\n\
             {sleep}\n\
             [listener]\n\
             listener_type = \"DomainSocket\"\n\
             timeout = 200\n\
             socket_path = {}\n\n\
             [authenticator]\n\
             auth_type = \"UnixPeerCredentials\"\n\n\
             [[key_manager]]\n\
             name = \"on-disk-manager\"\n\
             manager_type = \"OnDisk\"\n\
             store_path = {}\n\n\
             [[provider]]\n\
             provider_type = \"Pkcs11\"\n\
             key_info_manager = \"on-disk-manager\"\n\
             library_path = {}\n\
             slot_number = {slot}\n\
             user_pin = {}\n",
                toml_str(&socket.to_string_lossy()),
                toml_str(&dir.join("mappings").to_string_lossy()),
                toml_str(SOFTHSM_MODULE),
                pin,
            )
        };
        let config = render(&toml_str(&hsm.pin()));
        let path = dir.join("config.toml");
        fs::write(&path, &config).expect("Parsec config");
        let log = fs::File::create(dir.join("parsec.log")).expect("Parsec log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            .env("SOFTHSM2_CONF", &hsm.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut p = Parsec {
            label: label.to_owned(),
            // The report shows the config without the PIN (of a throw-away token, still).
            config: render("\"…\""),
            socket,
            child,
            paused: false,
        };
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!(
                    "Parsec exited during start-up ({st}):\n{}",
                    fs::read_to_string(dir.join("parsec.log")).unwrap_or_default()
                );
            }
            if p.socket.exists() && p.client_raw().ping().is_ok() {
                break;
            }
            assert!(
                Instant::now() < end,
                "Parsec did not answer within 60 s:\n{}",
                fs::read_to_string(dir.join("parsec.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client_raw(&self) -> BasicClient {
        // The client reads its endpoint from the environment when it is made; no other thread
        // runs while the benchmark makes clients.
        std::env::set_var(
            "PARSEC_SERVICE_ENDPOINT",
            format!("unix:{}", self.socket.display()),
        );
        BasicClient::new_naked().expect("Parsec client")
    }

    /// A client with the service's default provider (PKCS#11) and authenticator (Unix peer
    /// credentials).
    pub fn client(&self) -> BasicClient {
        let mut c = self.client_raw();
        c.set_default_provider().expect("Parsec provider");
        c.set_default_auth(None).expect("Parsec authenticator");
        c
    }

    /// Generates the RSA-2048 signing key `name` on the token.
    pub fn generate_sign_key(&self, name: &str) {
        let mut usage = UsageFlags::default();
        usage.set_sign_hash().set_verify_hash();
        let attributes = Attributes {
            lifetime: Lifetime::Persistent,
            key_type: Type::RsaKeyPair,
            bits: 2048,
            policy: Policy {
                usage_flags: usage,
                permitted_algorithms: Algorithm::AsymmetricSignature(rsa_pkcs1v15_sha256()),
            },
        };
        self.client()
            .psa_generate_key(name, attributes)
            .expect("Parsec psa_generate_key");
    }

    /// Stops the process (SIGSTOP) while another path is measured: its listener's polling
    /// takes no CPU from the others.
    pub fn pause(&mut self) {
        if !self.paused {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGSTOP);
            self.paused = true;
        }
    }

    /// Lets it run again.
    pub fn resume(&mut self) {
        if self.paused {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGCONT);
            self.paused = false;
        }
    }
}

impl Drop for Parsec {
    fn drop(&mut self) {
        self.resume();
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
