package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/cache-push/store/s3"
	"codeberg.org/provenix/provenix/metrics"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/up"
)

type upFlags struct {
	nats       natsFlags
	s3         s3Flags
	chunk      chunkFlags
	vsa        vsaFlags
	listen     string
	natsListen string
	tenant     string
	// concurrency is how many results the pusher handles at once.
	concurrency int
	// metricsListen is a separate address for /metrics and /status.
	metricsListen string
	status        bool
	jsonOut       bool
	// Listeners for firewalled builders and sites (docs/firewalled-workers.md).
	wsListen, wsCert, wsKey string
	wsNoTLS                 bool
	leafListen              string
	leafCert, leafKey       string
	// forges is the forges file (commit statuses of the verdicts).
	forges string
	// usageMaxAge is how long usage records are kept.
	usageMaxAge time.Duration
}

func newUpCmd(g *globals) *cobra.Command {
	f := &upFlags{}
	cmd := &cobra.Command{
		Use:   "up [flags]",
		Short: "Run Provenix in one process: embedded NATS, cache pusher and cache server",
		Long: `Run an embedded NATS server (JetStream on disk under the data directory), a
cache pusher and the binary cache's HTTP server. On first start it creates
the data directory: a builder key, a Nix cache key, a VSA key (keys/vsa,
which signs the verification summary of every path it publishes), a NATS
token and a default-deny policy trusting the local builder (builder id
"local").

'provenix build' finds the running instance through the data directory.
With --nats-url it uses an external NATS server or cluster instead.
It stops on SIGINT/SIGTERM, letting in-flight pushes finish.

Prometheus metrics are served at /metrics and a JSON status at /status, on
the cache's listener unless --metrics-listen gives them their own.
'provenix up --status' prints the status of the instance running on the
data directory.

With --s3-endpoint and --s3-bucket the cache lives in an S3 bucket (AWS,
MinIO, Garage, versitygw, ...) instead of the data directory's cache/: the
pusher writes there and the cache server serves nix from there. The secret
key is read from --s3-secret-file or $PROVENIX_S3_SECRET, never a flag.
Abandoned uploads older than a day are removed hourly.

Builders behind a firewall that only lets HTTPS out connect over WebSocket:
--websocket-listen 0.0.0.0:443 with --websocket-tls-cert/--websocket-tls-key
serves wss:// with the same token as the NATS port. A site with many
builders runs its own nats-server as a leaf node of --leafnode-listen (or
of the WebSocket listener). See docs/firewalled-workers.md.`,
		Example: `  provenix up
  provenix up --data-dir /var/lib/provenix --listen 0.0.0.0:8080
  provenix up --nats-url nats://127.0.0.1:4222
  provenix up --status
  provenix up --websocket-listen 0.0.0.0:443 --websocket-tls-cert fullchain.pem \
      --websocket-tls-key privkey.pem --leafnode-listen 0.0.0.0:7422
  PROVENIX_S3_SECRET=... provenix up --s3-endpoint s3.example.org \
      --s3-bucket nix-cache --s3-prefix main --s3-access-key AKIA...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.status {
				return runUpStatus(cmd.Context(), g, f.jsonOut)
			}
			return runUp(cmd.Context(), g, f)
		},
	}
	f.nats.register(cmd)
	f.s3.register(cmd)
	f.chunk.register(cmd)
	f.chunk.registerFlush(cmd)
	cmd.Flags().StringVar(&f.listen, "listen", up.DefaultListen, "cache HTTP server address")
	cmd.Flags().StringVar(&f.natsListen, "nats-listen", "", "embedded NATS address (default: a free port on 127.0.0.1)")
	cmd.Flags().StringVar(&f.tenant, "tenant", up.DefaultTenant, "tenant whose results this pusher publishes")
	cmd.Flags().IntVar(&f.concurrency, "concurrency", 0, "results the pusher handles at once (default 256, or 32 with S3, where each upload of a NAR over 1 MiB holds a 16 MiB part)")
	cmd.Flags().StringVar(&f.metricsListen, "metrics-listen", "", "address for /metrics and /status (default: the cache's --listen)")
	cmd.Flags().StringVar(&f.wsListen, "websocket-listen", "", "also accept NATS clients over WebSocket at host:port, e.g. 0.0.0.0:443 (wss://; needs --websocket-tls-cert and --websocket-tls-key)")
	cmd.Flags().StringVar(&f.wsCert, "websocket-tls-cert", "", "PEM certificate (chain) of the WebSocket listener")
	cmd.Flags().StringVar(&f.wsKey, "websocket-tls-key", "", "PEM private key of the WebSocket listener")
	cmd.Flags().BoolVar(&f.wsNoTLS, "websocket-no-tls", false, "serve plain ws:// (loopback addresses only: a TLS reverse proxy on this host in front)")
	cmd.Flags().StringVar(&f.leafListen, "leafnode-listen", "", "also accept leaf node connections at host:port, e.g. 0.0.0.0:7422")
	cmd.Flags().StringVar(&f.leafCert, "leafnode-tls-cert", "", "PEM certificate (chain) of the leaf node listener (default: no TLS)")
	cmd.Flags().StringVar(&f.leafKey, "leafnode-tls-key", "", "PEM private key of the leaf node listener")
	cmd.Flags().StringVar(&f.forges, "forges", "", "forges file: show the pusher's verdicts as commit statuses provenix/<system> on these forges (docs/forges.md)")
	cmd.Flags().Var(retention{&f.usageMaxAge}, "usage-max-age", "how long usage records are kept, e.g. 90d, 26w ('provenix usage' bills from them; default 90d)")
	cmd.Flags().BoolVar(&f.status, "status", false, "print the status of the running instance and exit")
	cmd.Flags().BoolVar(&f.jsonOut, "json", false, "with --status: print the status as JSON")
	return cmd
}

func runUp(ctx context.Context, g *globals, f *upFlags) error {
	s3opts, err := f.s3.options()
	if err != nil {
		return err
	}
	// The data directory's keys/vsa is Stack.Open's default, made there
	// on first start.
	vo, err := f.vsa.options("")
	if err != nil {
		return err
	}
	var natsOpts []queue.Option
	if f.nats.url != "" {
		// An external server: its credentials (a tenant's pusher.nk, say)
		// and TLS settings.
		if natsOpts, err = f.nats.options(""); err != nil {
			return err
		}
	} else if f.nats.creds != "" || f.nats.nkey != "" || f.nats.token != "" || f.nats.ca != "" || f.nats.cert != "" {
		return usageError("--nats-creds, --nats-nkey, --nats-token-file, --nats-ca and --nats-cert need --nats-url (the embedded server uses the data directory's token, without TLS)")
	}
	forges, err := loadForges(f.forges)
	if err != nil {
		return err
	}
	s, err := up.New(up.Config{
		DataDir: g.dataDir, Listen: f.listen, NATSURL: f.nats.url, NATSListen: f.natsListen, NATSOptions: natsOpts,
		Tenant: f.tenant, Concurrency: f.concurrency, MetricsListen: f.metricsListen, Logger: g.logger(), S3: s3opts,
		Chunking: f.chunk.mode, SharedChunks: f.chunk.shared, Flush: f.chunk.flush,
		WebSocketListen: f.wsListen, WebSocketCert: f.wsCert, WebSocketKey: f.wsKey, WebSocketNoTLS: f.wsNoTLS,
		LeafNodeListen: f.leafListen, LeafNodeCert: f.leafCert, LeafNodeKey: f.leafKey, Forges: forges,
		UsageMaxAge: f.usageMaxAge,
		VSA:         vo, PublicURL: f.vsa.publicURL,
	})
	if err != nil {
		return err
	}
	if err := s.Open(ctx); err != nil {
		return stoppedStarting(ctx, g, err)
	}
	p := s.Paths()
	fmt.Fprintf(g.stdout, "provenix up: data %s\n  NATS    %s\n", p.Dir, queue.RedactURL(s.NATSURL()))
	if u := s.WebSocketURL(); u != "" {
		fmt.Fprintf(g.stdout, "  NATS over WebSocket %s\n", u)
	}
	if u := s.LeafNodeURL(); u != "" {
		fmt.Fprintf(g.stdout, "  leaf nodes %s (user %s, JetStream domain %s)\n", u, natsserver.LeafNodeUser, s.JetStreamDomain())
	}
	fmt.Fprintf(g.stdout, "  cache   %s (public key in %s)\n  metrics %s\n  policy  %s\n",
		s.CacheURL(), p.CachePub(), s.MetricsURL(), p.Policy())
	if s3opts != nil {
		fmt.Fprintf(g.stdout, "  storage s3://%s/%s at %s\n", s3opts.Bucket, s3opts.Prefix, s3opts.Endpoint)
	}
	fmt.Fprintln(g.stdout, "Ctrl-C stops.")
	<-ctx.Done()
	fmt.Fprintln(g.stdout, "provenix up: stopping")
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return s.Close(cctx)
}

// runUpStatus prints the /status of the stack running on the data
// directory.
func runUpStatus(ctx context.Context, g *globals, asJSON bool) error {
	st, err := up.FetchStatus(ctx, g.paths())
	if err != nil {
		return err
	}
	if asJSON {
		b, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(g.stdout, string(b))
		return nil
	}
	w := g.stdout
	fmt.Fprintf(w, "provenix up: running since %s (%s)\n", st.Started.Local().Format(time.DateTime), st.Uptime)
	fmt.Fprintf(w, "  NATS          %s\n", st.NATSURL)
	if st.WebSocketURL != "" {
		fmt.Fprintf(w, "  WebSocket     %s\n", st.WebSocketURL)
	}
	if st.LeafNodeURL != "" {
		fmt.Fprintf(w, "  leaf nodes    %s (JetStream domain %s)\n", st.LeafNodeURL, st.JetStreamDomain)
	}
	fmt.Fprintf(w, "  tenant/group  %s/%s\n", st.Tenant, st.Group)
	for _, name := range metrics.SortedKeys(st.Streams) {
		fmt.Fprintf(w, "  stream %-8s %d messages\n", name, st.Streams[name])
	}
	fmt.Fprintf(w, "  consumer lag  %d pending, %d awaiting ack\n", st.ConsumerLag, st.ConsumerAckPending)
	fmt.Fprintf(w, "  results       %d received, %d published\n", st.Pusher.Received, st.Pusher.Published)
	if st.Waiting > 0 {
		fmt.Fprintf(w, "  waiting       %d path(s) for their references (provenix status PATH says which)\n", st.Waiting)
	}
	if st.Pusher.LastPublication != nil {
		fmt.Fprintf(w, "  last publication %s\n", st.Pusher.LastPublication.Local().Format(time.DateTime))
	} else {
		fmt.Fprintln(w, "  last publication none")
	}
	for _, reason := range metrics.SortedKeys(st.Pusher.Rejections) {
		fmt.Fprintf(w, "  rejected      %d %s\n", st.Pusher.Rejections[reason], reason)
	}
	for _, e := range st.Errors {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
	return nil
}

// s3Flags select an S3 bucket for the binary cache.
type s3Flags struct {
	endpoint     string
	region       string
	bucket       string
	prefix       string
	accessKey    string
	secretFile   string
	insecureHTTP bool
}

// s3SecretEnv holds the S3 secret key when no --s3-secret-file is given.
const s3SecretEnv = "PROVENIX_S3_SECRET"

func (f *s3Flags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.endpoint, "s3-endpoint", "", "keep the cache in S3: host[:port] of the S3 endpoint, no scheme")
	fl.StringVar(&f.region, "s3-region", "", "S3 region (default: looked up)")
	fl.StringVar(&f.bucket, "s3-bucket", "", "S3 bucket of the cache (must exist)")
	fl.StringVar(&f.prefix, "s3-prefix", "", "cache root inside the bucket, e.g. tenants/acme")
	fl.StringVar(&f.accessKey, "s3-access-key", "", "S3 access key id")
	fl.StringVar(&f.secretFile, "s3-secret-file", "", "file holding the S3 secret key (default: $"+s3SecretEnv+")")
	fl.BoolVar(&f.insecureHTTP, "s3-insecure-http", false, "talk plain HTTP to the S3 endpoint (tests, loopback only)")
}

// options are the S3 store's options, nil when no S3 flag is set.
func (f *s3Flags) options() (*s3.Options, error) {
	if f.endpoint == "" {
		if f.bucket != "" || f.prefix != "" || f.accessKey != "" || f.secretFile != "" || f.region != "" || f.insecureHTTP {
			return nil, usageError("--s3-* flags need --s3-endpoint")
		}
		return nil, nil
	}
	if f.bucket == "" {
		return nil, usageError("--s3-endpoint needs --s3-bucket (an existing bucket)")
	}
	if f.accessKey == "" {
		return nil, usageError("--s3-endpoint needs --s3-access-key")
	}
	secret := os.Getenv(s3SecretEnv)
	if f.secretFile != "" {
		b, err := os.ReadFile(f.secretFile)
		if err != nil {
			return nil, usageError("--s3-secret-file: %v", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	if secret == "" {
		return nil, usageError("no S3 secret key: pass --s3-secret-file or set $%s", s3SecretEnv)
	}
	return &s3.Options{
		Endpoint: f.endpoint, Region: f.region, Bucket: f.bucket, Prefix: f.prefix,
		AccessKey: f.accessKey, SecretKey: secret, InsecureHTTPUnsafe: f.insecureHTTP,
	}, nil
}
