/* pickle.c -- the pickle machine: runs the protocol-2 subset that torch.save writes into a
 * tree of values (None, bools, ints, strings, tuples and lists, dicts, globals), with
 * PyTorch's two ways of naming tensor data understood: a persistent id ('storage', type,
 * key, location, numel) becomes a STORAGE value, and torch._utils._rebuild_tensor_v2 /
 * _rebuild_parameter a TENSOR over it (offset, sizes, strides).
 *
 * It reads bytes from memory and nothing else: where the pickle and its storages come from
 * (a zip entry, the fuzz input), and what the tree means (a state dict, a module), belong to
 * torch.c. Every length is checked against the pickle's end; stack and memo are bounded by
 * the pickle's own size; an opcode outside the subset is refused with its byte and offset.
 * Start from run_pickle.
 */
#include "convert.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pval *pv_new(pickle *pk, int kind)
{
    if (grow((void **)&pk->pool, &pk->cappool, pk->npool + 1, sizeof *pk->pool) != 0) return NULL;
    pval *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->kind = kind;
    pk->pool[pk->npool++] = v;
    return v;
}

void pickle_free(pickle *pk)
{
    for (size_t i = 0; i < pk->npool; i++) {
        if (pk->pool[i]->kind == PV_GLOBAL) free((char *)pk->pool[i]->s);
        free(pk->pool[i]->items);
        free(pk->pool[i]);
    }
    free(pk->pool);
    free(pk->stack);
    free(pk->marks);
    free(pk->memo);
}

static int pv_append(pval *v, pval *item)
{
    if (grow((void **)&v->items, &v->cap, v->n + 1, sizeof *v->items) != 0) return -1;
    v->items[v->n++] = item;
    return 0;
}

static int push(pickle *pk, pval *v)
{
    if (!v) return fail(pk->cv, "out of memory in pickle");
    if (pk->nstack >= pk->limit) return fail(pk->cv, "data.pkl: stack too deep");
    if (grow((void **)&pk->stack, &pk->capstack, pk->nstack + 1, sizeof *pk->stack) != 0)
        return fail(pk->cv, "out of memory in pickle");
    pk->stack[pk->nstack++] = v;
    return 0;
}

static pval *pop(pickle *pk)
{
    if (pk->nstack == 0 || (pk->nmarks && pk->marks[pk->nmarks - 1] >= pk->nstack)) {
        fail(pk->cv, "data.pkl: stack underflow (corrupt pickle)");
        return NULL;
    }
    return pk->stack[--pk->nstack];
}

static int need(pickle *pk, size_t n)
{
    if ((size_t)(pk->end - pk->p) < n) return fail(pk->cv, "data.pkl: truncated pickle");
    return 0;
}

/* Storage type names as torch.save spells them; element sizes let us validate entries. */
static void storage_type(pval *g, const char *name)
{
    static const struct { const char *name; int dtype, elsize; } types[] = {
        {"FloatStorage", DT_F32, 4},   {"HalfStorage", DT_F16, 2},
        {"BFloat16Storage", DT_BF16, 2}, {"DoubleStorage", DT_OTHER, 8},
        {"LongStorage", DT_OTHER, 8},  {"IntStorage", DT_OTHER, 4},
        {"ShortStorage", DT_OTHER, 2}, {"CharStorage", DT_OTHER, 1},
        {"ByteStorage", DT_OTHER, 1},  {"BoolStorage", DT_OTHER, 1},
    };
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (strcmp(name, types[i].name) == 0) {
            g->global = G_STORAGE;
            g->dtype = types[i].dtype;
            g->elsize = types[i].elsize;
            snprintf(g->dtype_name, sizeof g->dtype_name, "%s", name);
        }
}

static int op_global(pickle *pk, const char *mod, size_t ml, const char *name, size_t nl)
{
    pval *g = pv_new(pk, PV_GLOBAL);
    if (!g) return fail(pk->cv, "out of memory in pickle");
    char *full = malloc(ml + nl + 2);
    if (!full) return fail(pk->cv, "out of memory in pickle");
    memcpy(full, mod, ml);
    full[ml] = '.';
    memcpy(full + ml + 1, name, nl);
    full[ml + nl + 1] = 0;
    g->s = full;
    g->slen = ml + nl + 1;
    if (!strcmp(full, "collections.OrderedDict")) g->global = G_ODICT;
    else if (!strcmp(full, "torch._utils._rebuild_tensor_v2")) g->global = G_REBUILD_V2;
    else if (!strcmp(full, "torch._utils._rebuild_parameter")) g->global = G_REBUILD_PARAM;
    else if (ml == 5 && !memcmp(mod, "torch", 5)) storage_type(g, full + 6);
    return push(pk, g);
}

static int as_int(const pval *v, int64_t *out)
{
    if (!v || (v->kind != PV_INT && v->kind != PV_BOOL)) return -1;
    *out = v->i;
    return 0;
}

static int op_reduce(pickle *pk)
{
    pval *args = pop(pk), *fn = args ? pop(pk) : NULL;
    if (!fn) return -1;
    if (fn->kind != PV_GLOBAL || args->kind != PV_TUPLE)
        return fail(pk->cv, "data.pkl: REDUCE on something not callable (corrupt pickle)");
    if (fn->global == G_ODICT) return push(pk, pv_new(pk, PV_DICT));
    if (fn->global == G_REBUILD_PARAM) {
        if (args->n < 1 || args->items[0]->kind != PV_TENSOR)
            return fail(pk->cv, "data.pkl: bad _rebuild_parameter arguments");
        return push(pk, args->items[0]);
    }
    if (fn->global != G_REBUILD_V2)
        return fail(pk->cv, "data.pkl: unsupported pickle callable %s", fn->s);
    /* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, ...) */
    if (args->n < 4 || args->items[0]->kind != PV_STORAGE || args->items[2]->kind != PV_TUPLE ||
        args->items[3]->kind != PV_TUPLE || args->items[2]->n != args->items[3]->n ||
        args->items[2]->n > MAX_SRC_DIMS)
        return fail(pk->cv, "data.pkl: bad _rebuild_tensor_v2 arguments");
    pval *t = pv_new(pk, PV_TENSOR);
    if (!t) return fail(pk->cv, "out of memory in pickle");
    t->storage = args->items[0];
    t->dtype = t->storage->dtype;
    t->elsize = t->storage->elsize;
    memcpy(t->dtype_name, t->storage->dtype_name, sizeof t->dtype_name);
    t->ndim = (int)args->items[2]->n;
    if (as_int(args->items[1], &t->i) != 0 || t->i < 0)
        return fail(pk->cv, "data.pkl: bad tensor storage offset");
    for (int k = 0; k < t->ndim; k++)
        if (as_int(args->items[2]->items[k], &t->shape[k]) != 0 ||
            as_int(args->items[3]->items[k], &t->stride[k]) != 0 || t->shape[k] < 0)
            return fail(pk->cv, "data.pkl: bad tensor size or stride");
    return push(pk, t);
}

/* Runs the pickle to its STOP and returns the value left on the stack (or NULL with
 * cv->err set): for torch.save, the state dict. */
pval *run_pickle(pickle *pk)
{
    conv *cv = pk->cv;
    for (;;) {
        if (need(pk, 1) != 0) return NULL;
        uint8_t op = *pk->p++;
        int rc = 0;
        switch (op) {
        case 0x80: rc = need(pk, 1); if (!rc) pk->p++; break;                    /* PROTO */
        case 0x95: rc = need(pk, 8); if (!rc) pk->p += 8; break;                 /* FRAME */
        case '}': rc = push(pk, pv_new(pk, PV_DICT)); break;                     /* EMPTY_DICT */
        case ')': case ']': rc = push(pk, pv_new(pk, PV_TUPLE)); break;          /* EMPTY_TUPLE/LIST */
        case 'N': rc = push(pk, pv_new(pk, PV_NONE)); break;
        case 0x88: case 0x89: {                                                  /* NEWTRUE/FALSE */
            pval *v = pv_new(pk, PV_BOOL);
            if (v) v->i = op == 0x88;
            rc = push(pk, v);
            break;
        }
        case '(':                                                                 /* MARK */
            if (grow((void **)&pk->marks, &pk->capmarks, pk->nmarks + 1, sizeof *pk->marks) != 0)
                return fail(cv, "out of memory in pickle"), NULL;
            pk->marks[pk->nmarks++] = pk->nstack;
            break;
        case 'K': case 'M': case 'J': {                                          /* BININT1/2/ */
            size_t n = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            if (need(pk, n) != 0) return NULL;
            pval *v = pv_new(pk, PV_INT);
            if (v) v->i = n == 1 ? pk->p[0] : n == 2 ? rd16(pk->p) : (int32_t)rd32(pk->p);
            pk->p += n;
            rc = push(pk, v);
            break;
        }
        case 0x8a: {                                                              /* LONG1 */
            if (need(pk, 1) != 0) return NULL;
            size_t n = *pk->p++;
            if (n > 8 || need(pk, n) != 0) return fail(cv, "data.pkl: integer too large"), NULL;
            uint64_t u = 0;
            for (size_t k = 0; k < n; k++) u |= (uint64_t)pk->p[k] << (8 * k);
            if (n && n < 8 && (pk->p[n - 1] & 0x80)) u |= ~UINT64_C(0) << (8 * n);
            pk->p += n;
            pval *v = pv_new(pk, PV_INT);
            if (v) memcpy(&v->i, &u, 8);
            rc = push(pk, v);
            break;
        }
        case 'X': case 0x8c: case 0x8d: case 'U': case 'T': {                    /* strings */
            size_t hn = op == 0x8c || op == 'U' ? 1 : op == 0x8d ? 8 : 4;
            if (need(pk, hn) != 0) return NULL;
            uint64_t n = hn == 1 ? pk->p[0] : hn == 4 ? rd32(pk->p) : rd64(pk->p);
            pk->p += hn;
            if (n > (uint64_t)(pk->end - pk->p)) return need(pk, SIZE_MAX), NULL;
            pval *v = pv_new(pk, PV_STR);
            if (v) { v->s = (const char *)pk->p; v->slen = (size_t)n; }
            pk->p += n;
            rc = push(pk, v);
            break;
        }
        case 'c': {                                                               /* GLOBAL */
            const uint8_t *m = pk->p, *nl1 = memchr(m, '\n', (size_t)(pk->end - m));
            const uint8_t *nm = nl1 ? nl1 + 1 : NULL;
            const uint8_t *nl2 = nm ? memchr(nm, '\n', (size_t)(pk->end - nm)) : NULL;
            if (!nl2) return fail(cv, "data.pkl: truncated GLOBAL"), NULL;
            pk->p = nl2 + 1;
            rc = op_global(pk, (const char *)m, (size_t)(nl1 - m), (const char *)nm,
                           (size_t)(nl2 - nm));
            break;
        }
        case 0x93: {                                                              /* STACK_GLOBAL */
            pval *name = pop(pk), *mod = name ? pop(pk) : NULL;
            if (!mod) return NULL;
            if (mod->kind != PV_STR || name->kind != PV_STR)
                return fail(cv, "data.pkl: bad STACK_GLOBAL"), NULL;
            rc = op_global(pk, mod->s, mod->slen, name->s, name->slen);
            break;
        }
        case 'Q': {                                                               /* BINPERSID */
            /* ('storage', storage_type, key, location, numel) */
            pval *pid = pop(pk);
            if (!pid) return NULL;
            if (pid->kind != PV_TUPLE || pid->n != 5 || pid->items[0]->kind != PV_STR ||
                pid->items[0]->slen != 7 || memcmp(pid->items[0]->s, "storage", 7) != 0 ||
                pid->items[1]->kind != PV_GLOBAL || pid->items[2]->kind != PV_STR ||
                pid->items[4]->kind != PV_INT || pid->items[4]->i < 0)
                return fail(cv, "data.pkl: unsupported persistent id"), NULL;
            if (pid->items[1]->global != G_STORAGE)
                return fail(cv, "data.pkl: unsupported storage type %s", pid->items[1]->s), NULL;
            pval *s = pv_new(pk, PV_STORAGE);
            if (s) {
                s->dtype = pid->items[1]->dtype;
                s->elsize = pid->items[1]->elsize;
                memcpy(s->dtype_name, pid->items[1]->dtype_name, sizeof s->dtype_name);
                s->s = pid->items[2]->s;
                s->slen = pid->items[2]->slen;
                s->numel = (uint64_t)pid->items[4]->i;
            }
            rc = push(pk, s);
            break;
        }
        case 't': case 0x85: case 0x86: case 0x87: {                             /* TUPLE, TUPLE1-3 */
            size_t from;
            if (op == 't') {
                if (!pk->nmarks) return fail(cv, "data.pkl: TUPLE without MARK"), NULL;
                from = pk->marks[--pk->nmarks];
            } else {
                size_t k = (size_t)(op - 0x84);
                size_t floor_ = pk->nmarks ? pk->marks[pk->nmarks - 1] : 0;
                if (pk->nstack < floor_ + k) return fail(cv, "data.pkl: stack underflow"), NULL;
                from = pk->nstack - k;
            }
            pval *t = pv_new(pk, PV_TUPLE);
            if (!t) return fail(cv, "out of memory in pickle"), NULL;
            for (size_t k = from; k < pk->nstack; k++)
                if (pv_append(t, pk->stack[k]) != 0) return fail(cv, "out of memory"), NULL;
            pk->nstack = from;
            rc = push(pk, t);
            break;
        }
        case 'a': case 'e': case 's': case 'u': {                  /* APPEND(S), SETITEM(S) */
            size_t from;
            if (op == 'e' || op == 'u') {
                if (!pk->nmarks) return fail(cv, "data.pkl: missing MARK"), NULL;
                from = pk->marks[--pk->nmarks];
            } else {
                size_t k = op == 's' ? 2 : 1;
                size_t floor_ = pk->nmarks ? pk->marks[pk->nmarks - 1] : 0;
                if (pk->nstack < floor_ + k + 1) return fail(cv, "data.pkl: stack underflow"), NULL;
                from = pk->nstack - k;
            }
            if (from == 0) return fail(cv, "data.pkl: stack underflow"), NULL;
            pval *target = pk->stack[from - 1];
            int is_dict = op == 's' || op == 'u';
            if (target->kind != (is_dict ? PV_DICT : PV_TUPLE) || (is_dict && (pk->nstack - from) % 2))
                return fail(cv, "data.pkl: bad container operation (corrupt pickle)"), NULL;
            for (size_t k = from; k < pk->nstack; k++)
                if (pv_append(target, pk->stack[k]) != 0) return fail(cv, "out of memory"), NULL;
            pk->nstack = from;
            break;
        }
        case 'R': rc = op_reduce(pk); break;                                      /* REDUCE */
        case 'b': {                             /* BUILD: a state dict's _metadata; dropped */
            pval *state = pop(pk);
            if (!state) return NULL;
            if (!pk->nstack || pk->stack[pk->nstack - 1]->kind != PV_DICT)
                return fail(cv, "data.pkl: BUILD on an unsupported object"), NULL;
            break;
        }
        case 'q': case 'r': case 0x94: {                           /* BINPUT, LONG_BINPUT, MEMOIZE */
            size_t idx;
            if (op == 0x94) idx = (size_t)-1;
            else {
                size_t n = op == 'q' ? 1 : 4;
                if (need(pk, n) != 0) return NULL;
                idx = n == 1 ? pk->p[0] : rd32(pk->p);
                pk->p += n;
            }
            if (!pk->nstack) return fail(cv, "data.pkl: PUT on an empty stack"), NULL;
            if (op == 0x94) {
                for (idx = 0; idx < pk->capmemo && pk->memo[idx]; idx++) {}
            }
            if (idx >= pk->limit) return fail(cv, "data.pkl: memo index %zu too large", idx), NULL;
            size_t old = pk->capmemo;
            if (grow((void **)&pk->memo, &pk->capmemo, idx + 1, sizeof *pk->memo) != 0)
                return fail(cv, "out of memory in pickle"), NULL;
            memset(pk->memo + old, 0, (pk->capmemo - old) * sizeof *pk->memo);
            pk->memo[idx] = pk->stack[pk->nstack - 1];
            break;
        }
        case 'h': case 'j': {                                      /* BINGET, LONG_BINGET */
            size_t n = op == 'h' ? 1 : 4;
            if (need(pk, n) != 0) return NULL;
            size_t idx = n == 1 ? pk->p[0] : rd32(pk->p);
            pk->p += n;
            if (idx >= pk->capmemo || !pk->memo[idx])
                return fail(cv, "data.pkl: memo %zu not set (corrupt pickle)", idx), NULL;
            rc = push(pk, pk->memo[idx]);
            break;
        }
        case '.':                                                                 /* STOP */
            return pop(pk);
        default:
            return fail(cv, "data.pkl: unsupported pickle opcode 0x%02x at byte %zu", op,
                        (size_t)(pk->p - 1 - pk->start)), NULL;
        }
        if (rc) return NULL;
    }
}
