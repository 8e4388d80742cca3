/* server.h -- `clip serve`, the HTTP server: its one entry point. */
#ifndef CLIP_SERVER_H
#define CLIP_SERVER_H

/* `clip serve ...` (argv[0] is "serve"): parses its options (and CLIP_* environment
 * variables), loads and warms the models, serves until SIGINT/SIGTERM, returns the exit
 * code. */
int clip_serve_main(int argc, char **argv);

#endif /* CLIP_SERVER_H */
