/* faults.h — fault injection into a worker's apply path, for crash tests.
 *
 * AMDB_FAULT="worker=1,point=mid_insert,after=N,action=segv" (parsed and
 * checked by amdb/_worker.py, which hands run_worker plain ints) makes one
 * worker crash or hang at a named point:
 *
 *   after_records  apply_chunk, before each record is applied: fires with
 *                  exactly N records applied by this worker
 *   mid_insert     apply_record, a new key's node and first version are
 *                  built but not linked into the skip list or hash index
 *   mid_publish    handle_chunk, a chunk is applied but nothing about it
 *                  (ring space, applied_seq, applied_chunk) is published
 *   mid_link       apply_record, a new key's node is linked into the skip
 *                  list but not yet into the hash index
 *   mid_compact    handle_compact, the new arena generation and its switch
 *                  record are whole (compact_state SWITCHING) but the
 *                  switch is not made (compact.pyx, invariant 3)
 *
 * A point lets its first N passes go by (after=N) and fires on the next one:
 *
 *   segv   a real write to an unmapped address (SIGSEGV; ASan and valgrind
 *          see an invalid write)
 *   abort  abort() (SIGABRT)
 *   hang   sleep forever (nanosleep, no CPU; the GIL is not held), leaving
 *          only when the owner process is gone, so that a test cannot leave
 *          an orphan behind
 *
 * Each fault writes one line to stderr first ("amdb fault injection: worker 1
 * (pid 1234) fires segv at mid_insert, pass 5"). Backtraces name the point:
 * each amdb_fault_point_* function is noinline and fires in its own frame.
 *
 * Process safety: everything here is private to one worker process (static
 * globals of amdb/native/worker/apply.pyx, which alone includes this header). It is
 * armed once, before the apply loop starts, and is then read and written by
 * the worker's apply thread only.
 *
 * Cost while disarmed (always, outside tests): each check is one load of a
 * static int, a compare and a branch marked unlikely; the point functions are
 * cold and never called.
 *
 * Implementation details follow.
 */
#ifndef AMDB_FAULTS_H
#define AMDB_FAULTS_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

/* Points and actions: amdb/_worker.py (FAULT_POINTS, FAULT_ACTIONS) uses the same numbers. */
enum {
    AMDB_FAULT_NONE = 0,
    AMDB_FAULT_AFTER_RECORDS = 1,
    AMDB_FAULT_MID_INSERT = 2,
    AMDB_FAULT_MID_PUBLISH = 3,
    AMDB_FAULT_MID_LINK = 4,
    AMDB_FAULT_MID_COMPACT = 5,
};
enum {
    AMDB_FAULT_SEGV = 1,
    AMDB_FAULT_ABORT = 2,
    AMDB_FAULT_HANG = 3,
};

#define AMDB_FAULT_HANG_POLL_NS 100000000L   /* 100 ms: how often a hung worker looks for its owner */

#if defined(__clang__)
#define AMDB_FAULT_POINT_ATTRS __attribute__((noinline, cold, used))
#else
/* noclone, and bodies that differ, keep GCC from cloning the points or
 * folding them into one symbol (identical code folding): a backtrace must
 * show which point fired. */
#define AMDB_FAULT_POINT_ATTRS __attribute__((noinline, noclone, cold, used))
#endif

static int amdb_fault_armed_point = AMDB_FAULT_NONE;  /* the point that may fire; NONE = disarmed */
static int amdb_fault_action;
static uint64_t amdb_fault_passes_left;               /* passes of the point still let through */
static pid_t amdb_fault_owner_pid;
static char amdb_fault_message[192];
static int amdb_fault_message_len;
/* An address the compiler cannot see through: the store below is a real
 * invalid write (page 0 is never mapped), not undefined behaviour it could
 * turn into a trap instruction or drop. */
static int *volatile amdb_fault_bad_address = (int *)16;

static const char *amdb_fault_point_name(int point) {
    switch (point) {
    case AMDB_FAULT_AFTER_RECORDS: return "after_records";
    case AMDB_FAULT_MID_INSERT: return "mid_insert";
    case AMDB_FAULT_MID_PUBLISH: return "mid_publish";
    case AMDB_FAULT_MID_LINK: return "mid_link";
    case AMDB_FAULT_MID_COMPACT: return "mid_compact";
    default: return NULL;
    }
}

static const char *amdb_fault_action_name(int action) {
    switch (action) {
    case AMDB_FAULT_SEGV: return "segv";
    case AMDB_FAULT_ABORT: return "abort";
    case AMDB_FAULT_HANG: return "hang";
    default: return NULL;
    }
}

/* Arm the fault of this worker. Returns 0, or -1 for an unknown point or
 * action (nothing armed). REQUIRES: the apply loop has not started. */
static int amdb_fault_arm(int point, int action, uint64_t after, uint64_t worker_index, pid_t owner_pid) {
    const char *point_name = amdb_fault_point_name(point);
    const char *action_name = amdb_fault_action_name(action);
    int n;
    if (point_name == NULL || action_name == NULL)
        return -1;
    n = snprintf(amdb_fault_message, sizeof amdb_fault_message,
                 "amdb fault injection: worker %llu (pid %ld) fires %s at %s, pass %llu (AMDB_FAULT)\n",
                 (unsigned long long)worker_index, (long)getpid(), action_name, point_name,
                 (unsigned long long)after + 1);
    amdb_fault_message_len = n < 0 ? 0 : (n < (int)sizeof amdb_fault_message ? n : (int)sizeof amdb_fault_message - 1);
    amdb_fault_action = action;
    amdb_fault_passes_left = after;
    amdb_fault_owner_pid = owner_pid;
    amdb_fault_armed_point = point;
    return 0;
}

/* Fire the armed action. A macro, not a function, so that the crash happens
 * in the frame of the amdb_fault_point_* that expands it (top of the
 * backtrace). Does not finish, except for a hang whose owner went away:
 * that exits the process. */
#define AMDB_FAULT_FIRE() do {                                                  \
        struct timespec step_ = {0, AMDB_FAULT_HANG_POLL_NS};                   \
        if (amdb_fault_message_len > 0) {                                       \
            ssize_t ignored_ = write(2, amdb_fault_message, (size_t)amdb_fault_message_len); \
            (void)ignored_;                                                     \
        }                                                                       \
        if (amdb_fault_action == AMDB_FAULT_SEGV) {                             \
            *amdb_fault_bad_address = 1;                                        \
            raise(SIGSEGV);              /* not reached: page 0 is unmapped */  \
        } else if (amdb_fault_action == AMDB_FAULT_ABORT) {                     \
            abort();                                                            \
        } else {                         /* AMDB_FAULT_HANG */                  \
            for (;;) {                                                          \
                nanosleep(&step_, NULL);                                        \
                if (getppid() != amdb_fault_owner_pid)                          \
                    _exit(3);            /* owner gone: like EXIT_OWNER_GONE */ \
            }                                                                   \
        }                                                                       \
    } while (0)

/* One function per point, so that a backtrace names it. Bodies differ (the
 * point number), so no two can be folded into one symbol. */
AMDB_FAULT_POINT_ATTRS static void amdb_fault_point_after_records(void) {
    if (amdb_fault_armed_point != AMDB_FAULT_AFTER_RECORDS) return;
    if (amdb_fault_passes_left) { amdb_fault_passes_left--; return; }
    AMDB_FAULT_FIRE();
}

AMDB_FAULT_POINT_ATTRS static void amdb_fault_point_mid_insert(void) {
    if (amdb_fault_armed_point != AMDB_FAULT_MID_INSERT) return;
    if (amdb_fault_passes_left) { amdb_fault_passes_left--; return; }
    AMDB_FAULT_FIRE();
}

AMDB_FAULT_POINT_ATTRS static void amdb_fault_point_mid_publish(void) {
    if (amdb_fault_armed_point != AMDB_FAULT_MID_PUBLISH) return;
    if (amdb_fault_passes_left) { amdb_fault_passes_left--; return; }
    AMDB_FAULT_FIRE();
}

AMDB_FAULT_POINT_ATTRS static void amdb_fault_point_mid_link(void) {
    if (amdb_fault_armed_point != AMDB_FAULT_MID_LINK) return;
    if (amdb_fault_passes_left) { amdb_fault_passes_left--; return; }
    AMDB_FAULT_FIRE();
}

AMDB_FAULT_POINT_ATTRS static void amdb_fault_point_mid_compact(void) {
    if (amdb_fault_armed_point != AMDB_FAULT_MID_COMPACT) return;
    if (amdb_fault_passes_left) { amdb_fault_passes_left--; return; }
    AMDB_FAULT_FIRE();
}

/* The checks at the call sites: one predictable branch while disarmed. */
static inline void amdb_fault_check_after_records(void) {
    if (__builtin_expect(amdb_fault_armed_point == AMDB_FAULT_AFTER_RECORDS, 0))
        amdb_fault_point_after_records();
}
static inline void amdb_fault_check_mid_insert(void) {
    if (__builtin_expect(amdb_fault_armed_point == AMDB_FAULT_MID_INSERT, 0))
        amdb_fault_point_mid_insert();
}
static inline void amdb_fault_check_mid_link(void) {
    if (__builtin_expect(amdb_fault_armed_point == AMDB_FAULT_MID_LINK, 0))
        amdb_fault_point_mid_link();
}
static inline void amdb_fault_check_mid_publish(void) {
    if (__builtin_expect(amdb_fault_armed_point == AMDB_FAULT_MID_PUBLISH, 0))
        amdb_fault_point_mid_publish();
}
static inline void amdb_fault_check_mid_compact(void) {
    if (__builtin_expect(amdb_fault_armed_point == AMDB_FAULT_MID_COMPACT, 0))
        amdb_fault_point_mid_compact();
}

#endif /* AMDB_FAULTS_H */
