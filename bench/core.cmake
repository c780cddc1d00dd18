# Training-step benchmark (resdist side of bench/cpu_vs_pytorch.sh).
add_executable(resdist_train_bench ${CMAKE_CURRENT_SOURCE_DIR}/train_bench.cc)
target_link_libraries(resdist_train_bench PRIVATE resdist_worker)

# oneDNN convolution-only ceiling of a ResNet-20 step (what no amount of fusion can beat).
add_executable(resdist_onednn_conv_bench ${CMAKE_CURRENT_SOURCE_DIR}/onednn_conv_bench.cc)
target_link_libraries(resdist_onednn_conv_bench PRIVATE DNNL::dnnl)

# resdist's AVX-512 3x3 kernels against oneDNN's on ResNet-20's stride-1 shapes.
add_executable(resdist_conv3x3_bench ${CMAKE_CURRENT_SOURCE_DIR}/conv3x3_bench.cc)
target_link_libraries(resdist_conv3x3_bench PRIVATE resdist_worker)

# Single-core f32 FMA peak (register-only loop), the ceiling for the kernels above.
add_executable(resdist_fma_peak ${CMAKE_CURRENT_SOURCE_DIR}/fma_peak.cc)
target_compile_options(resdist_fma_peak PRIVATE -mavx512f -mfma -O2)
