use pupil::bench::memory::*;
fn p(s: &str) { let m = memory_status().unwrap(); eprintln!("{s:<20} anon {:.1} file {:.1}", mib(m.rss_anon), mib(m.rss_file)); }
fn main() {
    p("start");
    let path = std::env::args().nth(1).unwrap();
    let rt = pupil::generate::Runtime::load_path(std::path::Path::new(&path), 2).unwrap(); p("runtime");
    let ids = rt.tokenizer.encode_prompt("The Llama jumped over the", true).unwrap(); p("encode");
    let mut s = pupil::generate::Session::new(&rt, 4096).unwrap(); p("session");
    let mut sm = pupil::generate::Sampler::new(pupil::generate::SamplerConfig::greedy());
    let g = s.generate(&ids, 32, &mut sm, |_| {}).unwrap(); p("gen");
    eprintln!("{}", g.text);
}
