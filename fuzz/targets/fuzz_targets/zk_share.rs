#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_fuzz::run("zk_share", data));
