/* Native kernel of sal.rules.count_rules: one walk per first premise, straight into the table.
 *
 * Built at install time as the extension module sal.rules._kernel (optional: where no C
 * compiler is found the package installs without it and the numpy engine runs). The module
 * itself is empty; sal/rules/native.py loads this file with ctypes and calls the sal_*
 * functions below, which hold no Python object and touch no interpreter state, so ctypes
 * releases the GIL around them and the Python threads of native.py run blocks in parallel.
 * Loading a shared object costs about a millisecond, where a JIT pays its compiler start-up
 * (~0.2 s) in every fresh process.
 *
 * Same definitions and output as the numpy engine (sal/rules/numpy_engine.py). Every first
 * premise p1 is handled on its own, in ascending order:
 *   - its samples (a column of the CSC copy) are the occurrences of the premise {p1}, each with
 *     threshold u = a_p1; the conclusions of one occurrence are the features q of that sample
 *     with 0 < a_q < u;
 *   - the pairs (p1, p2), p2 > p1, are gathered from those samples with threshold
 *     u = min(a_p1, a_p2) and grouped by p2 with a counting sort; count(P) of a pair is its
 *     group size, so Apriori (min_premise_count) drops whole groups before any conclusion is read;
 *   - the conclusion lists are precomputed once per (sample, distinct layer count), in feature
 *     order, so a premise seen in one sample copies its list (most pairs; counted in O(1)); one
 *     seen in several sums them in a dense per-feature accumulator, then emits the touched
 *     features in order (insertion sort when few, else a two-level bitset, linear in their number).
 * Two passes: the first counts the rules of every p1 (exact, so the output columns are
 * allocated once at their final size), the second writes each p1's rules at its offset.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bumped whenever a signature or struct below changes; native.py refuses a stale build. */
#define SAL_KERNEL_ABI 3
/* Below this many distinct conclusions an insertion sort orders them faster than the bitset. */
#define INSERTION_SORT_MAX 32

/* Everything one counting problem shares between threads (mirrored by native._Problem). */
typedef struct {
    const int64_t *indptr;      /* CSR of layer counts [n_samples, C]: row pointers */
    const int32_t *indices;     /* feature ids, ascending within a row */
    const int32_t *data;        /* layer counts a_c > 0 */
    const int64_t *start;       /* per CSR entry: start of its conclusion list in `lists` */
    const int32_t *below;       /* per CSR entry: length of that list */
    const int32_t *lists;       /* concatenated conclusion lists */
    const int64_t *col_ptr;     /* CSC copy: per feature, its samples ... */
    const int32_t *col_rows;    /* ... their row ids ... */
    const int64_t *col_entries; /* ... and the position of each entry in the CSR */
    int64_t max_premises;
    int64_t min_premise_count;
    int64_t min_rule_count;
    double beta;
    int64_t *sizes;             /* [C] rules per first premise (written by the counting pass) */
    const int64_t *offsets;     /* [C] first row of each first premise in the table */
    int32_t *out_p1, *out_p2, *out_q, *out_n_premise, *out_n_rule;
    double *out_prob;
} sal_problem;

/* Working arrays of one thread (mirrored by native._Scratch); all zero between calls. */
typedef struct {
    int32_t *acc;      /* [C] conclusion counts of the current premise set */
    int32_t *tlist;    /* [C] its distinct conclusions */
    int32_t *cnt;      /* [C] occurrences of each second premise */
    int32_t *touched;  /* [C] second premises seen with the current p1 */
    int64_t *fill;     /* [C] counting-sort cursors (up to the gather size, which may pass 2^31) */
    int32_t *occ_p2;   /* [gather] second premise of each pair occurrence */
    int64_t *occ_e;    /* [gather] entry whose list gives its conclusions */
    int64_t *srt_e;    /* [gather] the same, grouped by second premise */
    uint64_t *words;   /* [ceil(C / 64)] bitset */
    uint64_t *summary; /* [ceil(C / 4096)] its non-zero words */
    int64_t n_summary;
} sal_scratch;

int64_t sal_kernel_abi(void) { return SAL_KERNEL_ABI; }

static int cmp_int32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void insertion_sort_int32(int32_t *v, int64_t n) {
    for (int64_t k = 1; k < n; k++) {
        int32_t x = v[k];
        int64_t i = k - 1;
        while (i >= 0 && v[i] > x) {
            v[i + 1] = v[i];
            i--;
        }
        v[i + 1] = x;
    }
}

static void sort_int32(int32_t *v, int64_t n) {
    if (n > 48)
        qsort(v, (size_t)n, sizeof(int32_t), cmp_int32);
    else
        insertion_sort_int32(v, n);
}

/* Number of entries of sorted v[0:n] below x (numpy's searchsorted, side="left"). */
static int32_t count_below(const int32_t *v, int64_t n, int32_t x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (int32_t)lo;
}

/* Sorts each row's layer counts into `sorted` (nnz entries, rows at the CSR offsets) and
 * returns the total length of the conclusion lists: one list per distinct value above a
 * row's minimum. */
int64_t sal_conclusion_lists_size(int64_t n_rows, const int64_t *indptr, const int32_t *data, int32_t *sorted) {
    int64_t size = 0;
    for (int64_t n = 0; n < n_rows; n++) {
        int64_t a = indptr[n], len = indptr[n + 1] - a;
        int32_t *vals = sorted + a;
        memcpy(vals, data + a, (size_t)len * sizeof(int32_t));
        sort_int32(vals, len);
        for (int64_t i = 1; i < len; i++)
            if (vals[i] != vals[i - 1]) size += i;
    }
    return size;
}

/* Per entry (sample n, feature c): the features q of n with a_q < a_c, in feature order, as
 * lists[start[e] : start[e] + below[e]]; entries of one sample with equal layer counts share
 * one list. `sorted` comes from sal_conclusion_lists_size; `start` must come zeroed. */
void sal_conclusion_lists(int64_t n_rows, const int64_t *indptr, const int32_t *indices, const int32_t *data,
                          int64_t *start, int32_t *below, int32_t *lists, const int32_t *sorted) {
    int64_t pos = 0;
    for (int64_t n = 0; n < n_rows; n++) {
        int64_t a = indptr[n], b = indptr[n + 1], len = b - a;
        const int32_t *vals = sorted + a;
        for (int64_t j = a; j < b; j++) below[j] = count_below(vals, len, data[j]);
        for (int64_t i = 1; i < len; i++) {
            if (vals[i] == vals[i - 1]) continue;
            int32_t u = vals[i];
            int64_t first = pos;
            for (int64_t j = a; j < b; j++) {
                if (data[j] < u)
                    lists[pos++] = indices[j];
                else if (data[j] == u)
                    start[j] = first;
            }
        }
    }
}

static inline void bitset_add(sal_scratch *s, int32_t q) {
    int64_t w = q >> 6;
    s->words[w] |= (uint64_t)1 << (q & 63);
    s->summary[w >> 6] |= (uint64_t)1 << (w & 63);
}

/* Write the set members in ascending order to `out`, clear the set, return the count.
 * Costs O(members + n_summary) instead of a sort. */
static int64_t bitset_drain(sal_scratch *s, int32_t *out) {
    int64_t t = 0;
    for (int64_t sw = 0; sw < s->n_summary; sw++) {
        uint64_t x = s->summary[sw];
        while (x) {
            int64_t w = sw * 64 + __builtin_ctzll(x);
            uint64_t y = s->words[w];
            while (y) {
                out[t++] = (int32_t)(w * 64 + __builtin_ctzll(y));
                y &= y - 1;
            }
            s->words[w] = 0;
            x &= x - 1;
        }
        s->summary[sw] = 0;
    }
    return t;
}

/* Sum the conclusion lists of occurrences occ[a:b] into acc; the distinct conclusions go to
 * tlist in first-seen order. Returns how many there are. */
static int64_t accumulate_conclusions(const sal_problem *pb, sal_scratch *s, const int64_t *occ, int64_t a, int64_t b) {
    int64_t t = 0;
    int32_t *acc = s->acc, *tlist = s->tlist;
    for (int64_t i = a; i < b; i++) {
        int64_t e = occ[i];
        const int32_t *list = pb->lists + pb->start[e];
        for (int32_t k = 0; k < pb->below[e]; k++) {
            int32_t q = list[k];
            if (acc[q] == 0) tlist[t++] = q;
            acc[q]++;
        }
    }
    return t;
}

/* Rows [at, at + m) of first premise p1 before its groups are written: the values of a
 * premise set seen in one sample (n_premise = n_rule = 1), which most rules are, so that those
 * groups only write their conclusions and second premise. */
static void prefill_first_premise(const sal_problem *pb, int64_t at, int64_t m, int32_t p1) {
    int32_t *op1 = pb->out_p1 + at, *onp = pb->out_n_premise + at, *onr = pb->out_n_rule + at;
    double *oprob = pb->out_prob + at, prob = (1.0 + pb->beta) / (1.0 + 2.0 * pb->beta);
    for (int64_t t = 0; t < m; t++) op1[t] = p1;
    for (int64_t t = 0; t < m; t++) onp[t] = 1;
    for (int64_t t = 0; t < m; t++) onr[t] = 1;
    for (int64_t t = 0; t < m; t++) oprob[t] = prob;
}

/* The rules of a premise set seen in one sample, on prefilled rows: conclusions copied from q. */
static void write_one_sample(const sal_problem *pb, int64_t at, const int32_t *q, int64_t m, int32_t p2) {
    memcpy(pb->out_q + at, q, (size_t)m * sizeof(int32_t));
    int32_t *op2 = pb->out_p2 + at;
    for (int64_t t = 0; t < m; t++) op2[t] = p2;
}

/* Rules of one premise set from its occurrences occ[a:b] (entry of its weakest premise);
 * returns how many pass min_rule_count, written from row `at` when `write`. */
static int64_t group_rules(const sal_problem *pb, sal_scratch *s, const int64_t *occ, int64_t a, int64_t b, int write,
                           int64_t at, int32_t p2, int64_t n_premise) {
    double denom = (double)n_premise + 2.0 * pb->beta;
    if (b - a == 1) { /* one sample: every conclusion has count 1, already in feature order */
        if (pb->min_rule_count > 1) return 0;
        int64_t e = occ[a], m = pb->below[e];
        if (write) write_one_sample(pb, at, pb->lists + pb->start[e], m, p2);
        return m;
    }
    int32_t *acc = s->acc, *tlist = s->tlist;
    int64_t t = accumulate_conclusions(pb, s, occ, a, b), m = 0;
    if (!write) {
        for (int64_t k = 0; k < t; k++) {
            int32_t q = tlist[k];
            m += acc[q] >= pb->min_rule_count;
            acc[q] = 0;
        }
        return m;
    }
    if (t <= INSERTION_SORT_MAX) {
        insertion_sort_int32(tlist, t);
    } else { /* many: order them through the bitset, linear in their number */
        for (int64_t k = 0; k < t; k++) bitset_add(s, tlist[k]);
        t = bitset_drain(s, tlist);
    }
    for (int64_t k = 0; k < t; k++) {
        int32_t q = tlist[k], v = acc[q];
        if (v >= pb->min_rule_count) {
            int64_t o = at + m++;
            pb->out_p2[o] = p2;
            pb->out_q[o] = q;
            pb->out_n_premise[o] = (int32_t)n_premise;
            pb->out_n_rule[o] = v;
            pb->out_prob[o] = ((double)v + pb->beta) / denom;
        }
        acc[q] = 0;
    }
    return m;
}

/* Count (write == 0: into sizes) or write (at offsets) the rules of every first premise in
 * [p1_lo, p1_hi). */
void sal_rules_of_block(const sal_problem *pb, sal_scratch *s, int64_t p1_lo, int64_t p1_hi, int32_t write) {
    const int64_t *col_ptr = pb->col_ptr, *indptr = pb->indptr;
    const int32_t *indices = pb->indices, *data = pb->data;
    int32_t *cnt = s->cnt;
    int64_t *fill = s->fill;
    int64_t min_pc = pb->min_premise_count;
    for (int64_t p1 = p1_lo; p1 < p1_hi; p1++) {
        int64_t cs = col_ptr[p1], ce = col_ptr[p1 + 1], n_p1 = ce - cs;
        if (n_p1 < min_pc || n_p1 == 0) continue;
        if (write && pb->sizes[p1] == 0) continue;
        int64_t at = 0;
        if (write) {
            at = pb->offsets[p1];
            prefill_first_premise(pb, at, pb->sizes[p1], (int32_t)p1);
        }
        int64_t total = group_rules(pb, s, pb->col_entries, cs, ce, write, at, -1, n_p1);
        if (pb->max_premises == 2) {
            int64_t m = 0;
            for (int64_t i = cs; i < ce; i++) {
                int64_t n = pb->col_rows[i], e1 = pb->col_entries[i];
                int32_t u1 = data[e1];
                /* a row lists its features in ascending order: the second premises p2 > p1
                 * are the entries after p1's own */
                for (int64_t j = e1 + 1; j < indptr[n + 1]; j++) {
                    int32_t p2 = indices[j];
                    if (min_pc > 1 && col_ptr[p2 + 1] - col_ptr[p2] < min_pc) continue;
                    s->occ_p2[m] = p2;
                    s->occ_e[m] = data[j] < u1 ? j : e1; /* the weaker premise sets the threshold */
                    m++;
                    if (cnt[p2] == 0) bitset_add(s, p2);
                    cnt[p2]++;
                }
            }
            int64_t nt = bitset_drain(s, s->touched), off = 0;
            const int32_t *p2s = s->touched;
            for (int64_t k = 0; k < nt; k++) {
                int32_t p2 = p2s[k];
                fill[p2] = off;
                if (cnt[p2] >= min_pc) off += cnt[p2];
            }
            if (off) /* counting sort of the frequent pairs' occurrences by p2 */
                for (int64_t i = 0; i < m; i++) {
                    int32_t p2 = s->occ_p2[i];
                    if (cnt[p2] >= min_pc) s->srt_e[fill[p2]++] = s->occ_e[i];
                }
            for (int64_t k = 0; k < nt; k++) {
                int32_t p2 = p2s[k], k_p2 = cnt[p2];
                if (k_p2 >= min_pc) {
                    if (k_p2 == 1) { /* the common case: one sample, conclusions copied in order */
                        int64_t e1 = s->srt_e[fill[p2] - 1];
                        int64_t m1 = pb->min_rule_count == 1 ? pb->below[e1] : 0;
                        if (write && m1) write_one_sample(pb, at + total, pb->lists + pb->start[e1], m1, p2);
                        total += m1;
                    } else {
                        int64_t b = fill[p2];
                        total += group_rules(pb, s, s->srt_e, b - k_p2, b, write, at + total, p2, k_p2);
                    }
                }
                cnt[p2] = 0;
            }
        }
        if (!write) pb->sizes[p1] = total;
    }
}

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "_kernel",
    "Native rule-counting kernel; loaded with ctypes by sal.rules.native (no Python API).", -1, NULL,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&kernel_module); }
