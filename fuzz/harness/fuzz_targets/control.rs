#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| xfrm_fuzz::control(data));
