//! The AVX2 int8 engine (and AVX-512 BW, which quantises the same way) quantises within its
//! own bounds (`vpmaddubsw`'s pairs of products must fit 16 bits), so its drift from f32 is
//! measured apart from the other engines'. The engine is forced for this whole process, so
//! this binary holds one test.

mod common;

/// `FOODCLIP_INT8=avx2` keeps every image and prompt embedding of every fixture within cosine
/// 0.999 of f32's (where the CPU has AVX2).
#[test]
fn avx2_int8_embeddings_stay_close_to_f32() {
    #[cfg(target_arch = "x86_64")]
    if foodclip::model::int8::avx2_available() {
        // The only test in this process: nothing else reads the environment meanwhile.
        std::env::set_var("FOODCLIP_INT8", "avx2");
        common::drift::assert_close_to_f32(&[foodclip::model::Precision::Int8]);
        return;
    }
    eprintln!("no AVX2 on this CPU: the AVX2 int8 engine is not run here");
}
