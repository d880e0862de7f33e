use pupil::{gguf::GgufFile, model::Llama};
fn main() {
    let f = GgufFile::open(std::env::args().nth(1).unwrap()).unwrap();
    let m = Llama::load(&f).unwrap();
    let pool = pupil::threads::pool(2);
    let mut cache = m.new_cache(512);
    let mut ids: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let t = std::time::Instant::now();
    pool.install(|| {
        let h = m.forward(&ids, &mut cache).unwrap();
        let mut last = h[h.len() - m.cfg.n_embd..].to_vec();
        for _ in 0..20 {
            let l = m.logits(&last);
            let (a, _) = l.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            ids.push(a as u32);
            last = m.forward(&[a as u32], &mut cache).unwrap();
        }
    });
    println!("{:?} {:?}", &ids[5..], t.elapsed());
}
