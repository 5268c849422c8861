//! Print the scoring normalisation of each stdin line (for cross-checking the normaliser).
use std::io::BufRead;
fn main() {
    for line in std::io::stdin().lock().lines() {
        println!("{}", coda_asr::eval::normalize::normalize(&line.unwrap()));
    }
}
