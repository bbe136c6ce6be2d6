/* malloc-counter.c: an LD_PRELOAD shim that counts allocations
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Preloaded into test-allocations, it counts every call that can allocate
 * (malloc, calloc, realloc, the aligned allocators) made by anybody in the
 * process, and hands the allocation to glibc. The test finds the count
 * with dlsym(), so without the shim it knows to skip.
 */

#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>

/* The project builds with hidden visibility: what a preload interposes,
 * and what the test looks up, must be exported. */
#pragma GCC visibility push(default)

extern void *__libc_malloc (size_t size);
extern void *__libc_calloc (size_t n, size_t size);
extern void *__libc_realloc (void *ptr, size_t size);
extern void *__libc_memalign (size_t alignment, size_t size);
extern void  __libc_free (void *ptr);

unsigned long spark_malloc_counter_get (void);

static atomic_ulong n_allocations;

static inline void
count (void)
{
  atomic_fetch_add_explicit (&n_allocations, 1, memory_order_relaxed);
}

unsigned long
spark_malloc_counter_get (void)
{
  return atomic_load (&n_allocations);
}

void *
malloc (size_t size)
{
  count ();
  return __libc_malloc (size);
}

void *
calloc (size_t n,
        size_t size)
{
  count ();
  return __libc_calloc (n, size);
}

void *
realloc (void   *ptr,
         size_t  size)
{
  count ();
  return __libc_realloc (ptr, size);
}

void *
memalign (size_t alignment,
          size_t size)
{
  count ();
  return __libc_memalign (alignment, size);
}

void *
aligned_alloc (size_t alignment,
               size_t size)
{
  count ();
  return __libc_memalign (alignment, size);
}

int
posix_memalign (void   **out,
                size_t   alignment,
                size_t   size)
{
  void *ptr;

  count ();
  ptr = __libc_memalign (alignment, size);
  if (ptr == NULL)
    return ENOMEM;
  *out = ptr;
  return 0;
}

void
free (void *ptr)
{
  __libc_free (ptr);
}

#pragma GCC visibility pop
