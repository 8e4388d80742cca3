/* fetch.h -- the URL client: downloads an image URL under a small policy (which hosts,
 * whether private addresses may be reached, how long, how many bytes, which CAs), with
 * SSRF checks on the address actually connected to, TLS and redirects. */
#ifndef CLIP_FETCH_H
#define CLIP_FETCH_H

#include "json.h"

#include <stddef.h>

typedef struct clip_fetch_policy {
    const char *allowed_hosts;   /* comma-separated host names; NULL: any public host     */
    int allow_private;           /* let URLs reach private, loopback, link-local, ...     */
    double timeout;              /* seconds for the whole download, redirects included    */
    size_t max_bytes;            /* the largest download accepted                         */
    const char *ca_file;         /* CA certificates (PEM) for https; NULL: the system's   */
} clip_fetch_policy;

/* The TLS client context https URLs use (an SSL_CTX), made once and shared by threads. */
typedef struct clip_fetch_tls clip_fetch_tls;

/* Makes the TLS context trusting the system's CAs and pol->ca_file. Returns 0 with *out,
 * which is NULL in a build without TLS (a CA file is then ignored with a warning on
 * stderr, prefixed "prog: "); or -1 with *out NULL when OpenSSL cannot make a context or
 * the CA file cannot be loaded (that one said on stderr). */
int clip_fetch_tls_new(const clip_fetch_policy *pol, const char *prog, clip_fetch_tls **out);
void clip_fetch_tls_free(clip_fetch_tls *tls);   /* tls may be NULL */

/* Downloads the http(s) URL url[0, n) into out (reset first) under pol; tls NULL refuses
 * https URLs. Returns 0, or -1 with a one-line reason in why. */
int clip_fetch_url(const clip_fetch_policy *pol, const clip_fetch_tls *tls, const char *url,
                   size_t n, clip_buf *out, char *why, size_t wn);

#endif /* CLIP_FETCH_H */
