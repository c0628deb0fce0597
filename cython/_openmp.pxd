# OpenMP functions for the kernels, usable whether or not the compiler had
# OpenMP: without it the stubs below make every parallel loop serial.
# The pattern is scikit-learn's sklearn/utils/_openmp_helpers.pxd.

cdef extern from *:
    """
    #ifdef _OPENMP
        #include <omp.h>
        #define ZEROKARA_OPENMP 1
    #else
        #define ZEROKARA_OPENMP 0
        #define omp_get_thread_num() 0
        #define omp_get_max_threads() 1
        #define omp_get_num_threads() 1
    #endif
    """
    bint ZEROKARA_OPENMP
    int omp_get_thread_num() noexcept nogil
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_threads() noexcept nogil
