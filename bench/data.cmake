# Loader throughput benchmark (issue 3): images/s of resdist_data with augmentation, one loader thread.
add_executable(resdist_loader_bench ${CMAKE_CURRENT_LIST_DIR}/loader_bench.cc)
target_link_libraries(resdist_loader_bench PRIVATE resdist_data)
