package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/cache-push/forgestatus"
	"codeberg.org/provenix/provenix/cache-push/policy"
	"codeberg.org/provenix/provenix/cache-push/server"
	"codeberg.org/provenix/provenix/cache-push/wire"
	"codeberg.org/provenix/provenix/oci"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/up"
	"codeberg.org/provenix/provenix/usage"
)

type pushFlags struct {
	nats     natsFlags
	cache    cacheFlags
	policy   string
	cacheKey string
	vsa      vsaFlags
	group    string
	tenant   string

	concurrency int
	ackWait     time.Duration
	replicas    int
	maxFailures int
	forges      string
	usageMaxAge time.Duration
}

func newCachePushCmd(g *globals) *cobra.Command {
	f := &pushFlags{}
	cmd := &cobra.Command{
		Use:   "cache-push [flags]",
		Short: "Run a cache pusher: verify results, apply the policy, write the cache",
		Long: `Consume results from NATS as a member of a pusher group (every group sees every
result; members of one group share them), verify each bundle, apply the
policy and write accepted outputs into a binary cache directory: NAR first,
then the provenance sidecar, then the verification summary (VSA, signed
with --vsa-key or keylessly), then the signed narinfo. Rejections are logged
and published on events.<tenant>.rejected; a result failing --max-failures
times for a reason other than an outage of the store or NATS is given up
and published on events.<tenant>.dead-letter.

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
	f.cache.register(cmd)
	f.cache.chunk.registerFlush(cmd)
	f.vsa.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.policy, "policy", "", "policy file (default: the data directory's policy.yaml)")
	fl.StringVar(&f.cacheKey, "cache-key", "", "Nix cache secret key (default: the data directory's keys/cache.key)")
	fl.StringVar(&f.group, "group", up.DefaultGroup, "pusher group (durable consumer name)")
	fl.StringVar(&f.tenant, "tenant", up.DefaultTenant, "tenant whose results to consume")
	fl.IntVar(&f.concurrency, "concurrency", 0, "results this pusher handles at once (default 256, or 32 with S3, where each upload of a NAR over 1 MiB holds a 16 MiB part; each holds one message; members of a group share the work)")
	fl.DurationVar(&f.ackWait, "ack-wait", queue.DefaultAckWait, "how long a result may go unacknowledged before another member of the group gets it; a killed pusher's results wait this long (the group's consumer takes the last value set)")
	fl.IntVar(&f.maxFailures, "max-failures", cachepush.DefaultMaxFailures, "retryable failures of one result before it is given up (dead-letter event); outages are retried forever")
	fl.StringVar(&f.forges, "forges", "", "forges file: show verdicts as commit statuses provenix/<system> on these forges (docs/forges.md)")
	fl.Var(retention{&f.usageMaxAge}, "usage-max-age", "how long usage records are kept, e.g. 90d (default 90d; give every pusher of the account the same)")
	fl.IntVar(&f.replicas, "nats-replicas", 0, "replicas of the streams and buckets this pusher creates; 0: 3 on a NATS cluster of 3 or more servers, else 1")
	return cmd
}

func runCachePush(ctx context.Context, g *globals, f *pushFlags) error {
	// Flags first: a usage error must not wait for a policy or a bucket.
	if _, err := f.cache.check(); err != nil {
		return err
	}
	if f.maxFailures < 1 {
		return usageError("--max-failures %d: at least 1", f.maxFailures)
	}
	if f.ackWait < 3*time.Second {
		return usageError("--ack-wait %s: at least 3s (the pusher heartbeats every third of it)", f.ackWait)
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
	vs, err := f.vsa.signer(p.VSAKey())
	if err != nil {
		return err
	}
	forges, err := loadForges(f.forges)
	if err != nil {
		return err
	}
	log := g.logger()
	st, err := f.cache.open(ctx, g, false, true)
	if err != nil {
		return stoppedStarting(ctx, g, err)
	}
	defer st.Close()
	concurrency := cmp.Or(f.concurrency, st.DefaultConcurrency())
	conn, err := f.nats.connect(ctx, g, "provenix-cache-push")
	if err != nil {
		return stoppedStarting(ctx, g, err)
	}
	defer conn.Close()
	if err := conn.EnsureStreams(ctx, queue.StreamOptions{Replicas: f.replicas, UsageMaxAge: f.usageMaxAge}); err != nil {
		return stoppedStarting(ctx, g, err)
	}
	pu, err := wire.StartPusher(ctx, wire.PusherOptions{
		Conn: conn, Store: st.Store, Policy: pol, CacheKey: key, VSA: vs, CacheURL: f.vsa.publicURL, Logger: log,
		Tenant: f.tenant, Group: f.group, Concurrency: concurrency, AckWait: f.ackWait, MaxFailures: f.maxFailures,
		Forges: forges,
	})
	if err != nil {
		return stoppedStarting(ctx, g, err)
	}
	log.Info("cache pusher running", "group", f.group, "tenant", f.tenant, "cache", st.Where, "concurrency", concurrency)
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return pu.Close(cctx)
}

func newCacheCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cache", Short: "Binary cache tools"}
	var (
		cache           cacheFlags
		listen, readers string
		vsaKey          vsaFlags
		// usageTenant, when set, records what is served (per reader,
		// every minute) as this tenant's usage on NATS (usageNATS).
		usageTenant string
		usageNATS   natsFlags
	)
	serve := &cobra.Command{
		Use:   "serve [flags]",
		Short: "Serve a cache directory or S3 bucket over HTTP for nix substituters",
		Long: `Serve a Provenix cache with the Nix binary-cache protocol: /nix-cache-info,
/<hash>.narinfo, /nar/..., and /<hash>.provenance.json; and as a read-only
OCI registry under /v2/: every published store path is the image
nix/<hash>-<name>:latest (one layer per path of its closure), plus the tags
of 'provenix oci tag'. With --vsa-key (the pusher's VSA key) the server
signs each image's verification summary the first time a client asks for
it, served as a cosign attestation (referrers API). The cache is a
directory (--dir) or an S3 bucket (--s3-endpoint, --s3-bucket and the other
--s3-* flags of 'provenix up'; secret key from --s3-secret-file or
$PROVENIX_S3_SECRET).

With --readers only the users listed in that file may read (HTTP basic
authentication, which stock nix sends from its netrc-file): one server per
tenant, each with its tenant's cache directory or S3 prefix and readers,
keeps tenants out of each other's caches. Put TLS in front of it: basic
credentials are readable on the wire.`,
		Example: `  provenix cache serve --dir /srv/cache --listen 0.0.0.0:8080
  provenix cache serve --dir /srv/cache/acme --readers tenants/acme/cache-readers --listen 127.0.0.1:8081
  PROVENIX_S3_SECRET=... provenix cache serve --s3-endpoint s3.example.org \
      --s3-bucket nix-cache --s3-prefix main --s3-access-key AKIA...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := cache.open(cmd.Context(), g, false, false)
			if err != nil {
				return stoppedStarting(cmd.Context(), g, err)
			}
			defer st.Close()
			signer, err := vsaKey.imageSigner()
			if err != nil {
				return err
			}
			reg, err := oci.New(st.Store, oci.Options{Logger: g.logger(), VSA: signer, PublicURL: vsaKey.publicURL})
			if errors.Is(err, oci.ErrKeylessVSA) {
				return usageError("%v", err)
			} else if err != nil {
				return err
			}
			so := server.Options{Logger: g.logger(), Registry: reg}
			if usageTenant != "" {
				conn, err := usageNATS.connect(cmd.Context(), g, "provenix-cache-serve")
				if err != nil {
					return stoppedStarting(cmd.Context(), g, err)
				}
				defer conn.Close()
				rec, err := usage.NewPublisher(conn)
				if err != nil {
					return err
				}
				m, err := usage.NewServeMeter(usage.ServeOptions{Tenant: usageTenant, Recorder: rec, Logger: g.logger()})
				if err != nil {
					return usageError("%v", err)
				}
				m.Start(cmd.Context())
				defer m.Close(context.WithoutCancel(cmd.Context()))
				so.Served = m
			}
			h := server.Handler(st.Store, so)
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
			fmt.Fprintf(g.stdout, "serving %s at http://%s\n", st.Where, ln.Addr())
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
	cache.register(serve)
	serve.Flags().StringVar(&listen, "listen", up.DefaultListen, "address to listen on")
	vsaKey.registerImageSigner(serve)
	usageNATS.register(serve)
	serve.Flags().StringVar(&usageTenant, "usage-tenant", "", "record what is served, per reader and minute, as this tenant's usage on NATS (--nats-url and a pusher's credentials; see 'provenix usage')")
	serve.Flags().StringVar(&readers, "readers", "", "serve only these readers (HTTP basic auth; a tenant's cache-readers from 'provenix tenant add'); serve behind TLS")
	cmd.AddCommand(serve)
	cmd.AddCommand(newGCCmd(g))
	return cmd
}

// loadForges reads the forges file of --forges, or nil without one.
func loadForges(file string) (*forgestatus.Forges, error) {
	if file == "" {
		return nil, nil
	}
	fs, err := forgestatus.Load(file)
	if err != nil {
		return nil, usageError("--forges: %v", err)
	}
	return fs, nil
}
