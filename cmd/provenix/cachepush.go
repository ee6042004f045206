package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/store"
	"codeberg.org/provenix/provenix/cache-push/store/local"
	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
)

type pushFlags struct {
	nats     natsFlags
	s3       s3Flags
	policy   string
	cacheKey string
	dir      string
	group    string
	tenant   string
}

func newCachePushCmd(g *globals) *cobra.Command {
	f := &pushFlags{}
	cmd := &cobra.Command{
		Use:   "cache-push [flags]",
		Short: "Run a cache pusher: verify results, apply the policy, write the cache",
		Long: `Consume results from NATS as a member of a pusher group (every group sees every
result; members of one group share them), verify each bundle, apply the
policy and write accepted outputs into a binary cache directory: NAR first,
then the provenance sidecar, then the signed narinfo. Rejections are logged
and published on events.<tenant>.rejected.

With --s3-endpoint and --s3-bucket it writes to an S3 bucket instead of
--dir (secret key from --s3-secret-file or $PROVENIX_S3_SECRET) and removes
abandoned uploads older than a day, hourly.`,
		Example: `  provenix cache-push --nats-url nats://nats:4222 --policy policy.yaml \
      --cache-key cache.key --dir /srv/cache --group main`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCachePush(cmd.Context(), g, f)
		},
	}
	f.nats.register(cmd)
	f.s3.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.policy, "policy", "", "policy file (default: the data directory's policy.yaml)")
	fl.StringVar(&f.cacheKey, "cache-key", "", "Nix cache secret key (default: the data directory's keys/cache.key)")
	fl.StringVar(&f.dir, "dir", "", "cache directory (default: the data directory's cache/)")
	fl.StringVar(&f.group, "group", up.DefaultGroup, "pusher group (durable consumer name)")
	fl.StringVar(&f.tenant, "tenant", up.DefaultTenant, "tenant whose results to consume")
	return cmd
}

func runCachePush(ctx context.Context, g *globals, f *pushFlags) error {
	s3opts, err := f.s3.options()
	if err != nil {
		return err
	}
	if s3opts != nil && f.dir != "" {
		return usageError("--dir and --s3-endpoint exclude each other")
	}
	p := g.paths()
	or := func(v, d string) string {
		if v != "" {
			return v
		}
		return d
	}
	pol, err := policy.Load(or(f.policy, p.Policy()))
	if err != nil {
		return usageError("%v", err)
	}
	key, err := cachepush.LoadKey(or(f.cacheKey, p.CacheKey()))
	if err != nil {
		return usageError("%v", err)
	}
	log := g.logger()
	var st store.Store
	where := or(f.dir, p.Cache())
	if s3opts == nil {
		if st, err = local.New(where); err != nil {
			return err
		}
	} else {
		s3st, err := s3.New(*s3opts)
		if err != nil {
			return err
		}
		if err := s3st.Check(ctx); err != nil {
			return fmt.Errorf("s3 cache at %s: %w", s3opts.Endpoint, err)
		}
		st, where = s3st, "s3://"+s3opts.Bucket+"/"+s3opts.Prefix
		go removeStaleS3(ctx, log, s3st)
	}
	conn, err := f.nats.connect(ctx, g, "provenix-cache-push")
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
		return err
	}
	pu, err := cachepush.New(cachepush.Config{KV: conn, Rebuilds: conn, Store: st, Policy: pol, CacheKey: key, Staging: conn, Events: conn, Logger: log})
	if err != nil {
		return err
	}
	if err := pu.Open(ctx, conn, queue.ConsumerOptions{Group: f.group, FilterSubject: queue.ResultsFilter(f.tenant)}); err != nil {
		return err
	}
	log.Info("cache pusher running", "group", f.group, "tenant", f.tenant, "cache", where)
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return pu.Close(cctx)
}

// removeStaleS3 deletes abandoned uploads now and hourly until ctx is done.
func removeStaleS3(ctx context.Context, log *slog.Logger, st *s3.Store) {
	t := time.NewTicker(up.DefaultS3StaleEvery)
	defer t.Stop()
	for {
		if err := st.RemoveStale(ctx, up.DefaultS3StaleAge); err != nil && ctx.Err() == nil {
			log.Warn("s3 cache: remove stale uploads", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func newCacheCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cache", Short: "Binary cache tools"}
	var dir, listen, readers string
	var s3f s3Flags
	serve := &cobra.Command{
		Use:   "serve [flags]",
		Short: "Serve a cache directory over HTTP for nix substituters",
		Long: `Serve a Provenix cache directory with the Nix binary-cache protocol:
/nix-cache-info, /<hash>.narinfo, /nar/..., and /<hash>.provenance.json.
With --s3-endpoint and --s3-bucket it serves the cache under --s3-prefix
in that bucket instead (secret key from --s3-secret-file or
$PROVENIX_S3_SECRET).

With --readers only the users listed in that file may read (HTTP basic
authentication, which stock nix sends from its netrc-file): one server per
tenant, each with its tenant's cache directory and readers, keeps tenants
out of each other's caches. Put TLS in front of it: basic credentials are
readable on the wire.`,
		Example: `  provenix cache serve --dir /srv/cache --listen 0.0.0.0:8080
  provenix cache serve --dir /srv/cache/acme --readers tenants/acme/cache-readers --listen 127.0.0.1:8081`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, where, err := serveStore(cmd.Context(), g, dir, &s3f)
			if err != nil {
				return err
			}
			h := server.Handler(st, server.Options{Logger: g.logger()})
			if readers != "" {
				r, err := server.LoadReaders(readers)
				if err != nil {
					return usageError("--readers: %v", err)
				}
				h = server.RequireReaders(h, r, "provenix cache")
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
			fmt.Fprintf(g.stdout, "serving %s at http://%s\n", where, ln.Addr())
			go func() {
				<-cmd.Context().Done()
				cctx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), 10*time.Second)
				defer cancel()
				srv.Shutdown(cctx)
			}()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	serve.Flags().StringVar(&dir, "dir", "", "cache directory (default: the data directory's cache/)")
	serve.Flags().StringVar(&listen, "listen", up.DefaultListen, "address to listen on")
	s3f.register(serve)
	serve.Flags().StringVar(&readers, "readers", "", "serve only these readers (HTTP basic auth; a tenant's cache-readers from 'provenix tenant add'); serve behind TLS")
	cmd.AddCommand(serve)
	cmd.AddCommand(newGCCmd(g))
	return cmd
}

// serveStore is the store `cache serve` serves: the S3 bucket's prefix
// when S3 flags are set, else dir (default: the data directory's cache).
func serveStore(ctx context.Context, g *globals, dir string, f *s3Flags) (store.Store, string, error) {
	opts, err := f.options()
	if err != nil {
		return nil, "", err
	}
	if opts == nil {
		if dir == "" {
			dir = g.paths().Cache()
		}
		st, err := local.New(dir)
		return st, dir, err
	}
	if dir != "" {
		return nil, "", usageError("--dir and --s3-endpoint exclude each other")
	}
	st, err := s3.New(*opts)
	if err != nil {
		return nil, "", err
	}
	if err := st.Check(ctx); err != nil {
		return nil, "", fmt.Errorf("s3 cache at %s: %w", opts.Endpoint, err)
	}
	return st, "s3://" + opts.Bucket + "/" + opts.Prefix, nil
}
