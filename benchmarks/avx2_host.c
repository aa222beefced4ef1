/* A CPU without AVX-512, as this process sees it: the forced-AVX2 run of `make bench`.
 *
 * Every library here picks its kernels by the CPUID instruction (ONNX Runtime's MLAS, oneDNN,
 * OpenBLAS, NumPy's dispatch, LLVM's host features), and ONNX Runtime has no setting that
 * makes it use AVX2 on an AVX-512 CPU. Linux can make CPUID fault instead of run
 * (arch_prctl(ARCH_SET_CPUID, 0), on CPUs with CPUID faulting: /proc/cpuinfo's
 * `cpuid_fault`): each CPUID then raises SIGSEGV, which `on_fault` answers with the real
 * CPUID's result less every AVX-512 feature bit, and the program goes on after the
 * instruction. The setting is per thread and inherited by the threads created later, so
 * `tilefuse_hide_avx512` must run before the libraries load and start their pools;
 * an exec'd program starts without it. The OS still saves the AVX-512 registers (XCR0 is
 * unchanged), so nothing breaks: the libraries only choose not to use them.
 *
 * Any other SIGSEGV goes to the handler that was there before (or the default one).
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

/* leaf 7, subleaf 0: AVX512F DQ IFMA PF ER CD BW VL (EBX); VBMI VBMI2 VNNI BITALG
 * VPOPCNTDQ (ECX); 4VNNIW 4FMAPS VP2INTERSECT FP16 (EDX) */
#define LEAF7_EBX ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | \
                   (1u << 28) | (1u << 30) | (1u << 31))
#define LEAF7_ECX ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
#define LEAF7_EDX ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23))
/* leaf 7, subleaf 1: AVX512_BF16 (EAX); AVX10 (EDX) */
#define LEAF7_1_EAX (1u << 5)
#define LEAF7_1_EDX (1u << 19)

static struct sigaction previous;
static volatile long answered;

static void on_fault(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) { /* cpuid */
        unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX];
        unsigned a, b, c, d;
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        __cpuid_count(leaf, sub, a, b, c, d);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        if (leaf == 7 && sub == 0) {
            b &= ~LEAF7_EBX;
            c &= ~LEAF7_ECX;
            d &= ~LEAF7_EDX;
        } else if (leaf == 7 && sub == 1) {
            a &= ~LEAF7_1_EAX;
            d &= ~LEAF7_1_EDX;
        }
        r[REG_RAX] = a;
        r[REG_RBX] = b;
        r[REG_RCX] = c;
        r[REG_RDX] = d;
        r[REG_RIP] += 2;
        __atomic_add_fetch(&answered, 1, __ATOMIC_RELAXED);
        return;
    }
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, info, context);
    } else if (previous.sa_handler != SIG_IGN && previous.sa_handler != SIG_DFL) {
        previous.sa_handler(sig);
    } else { /* the default action: restore it, and the fault repeats on return */
        sigaction(SIGSEGV, &previous, NULL);
    }
}

/* 0 when CPUID now hides AVX-512 from this thread and the threads it creates; else -1 */
int tilefuse_hide_avx512(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, &previous) != 0)
        return -1;
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        sigaction(SIGSEGV, &previous, NULL);
        return -1;
    }
    return 0;
}

/* how many CPUID instructions were answered so far */
long tilefuse_cpuid_answered(void) { return __atomic_load_n(&answered, __ATOMIC_RELAXED); }
