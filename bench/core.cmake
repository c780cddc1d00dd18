# Training-step benchmark (resdist side of bench/cpu_vs_pytorch.sh).
add_executable(resdist_train_bench ${CMAKE_CURRENT_SOURCE_DIR}/train_bench.cc)
target_link_libraries(resdist_train_bench PRIVATE resdist_worker)

# oneDNN convolution-only ceiling of a ResNet-20 step (what no amount of fusion can beat).
add_executable(resdist_onednn_conv_bench ${CMAKE_CURRENT_SOURCE_DIR}/onednn_conv_bench.cc)
target_link_libraries(resdist_onednn_conv_bench PRIVATE DNNL::dnnl)
