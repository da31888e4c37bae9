#![no_main]

use libfuzzer_sys::fuzz_target;

// The property lives in the library (mob::fuzzing::config_file), so tests/fuzz_replay.rs
// replays the corpus through the same code on stable.
fuzz_target!(|data: &[u8]| mob::fuzzing::config_file(data));
