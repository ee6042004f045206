package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/metrics"
	"codeberg.org/provenix/provenix/up"
)

type upFlags struct {
	nats       natsFlags
	listen     string
	natsListen string
	tenant     string
	// metricsListen is a separate address for /metrics and /status.
	metricsListen string
	status        bool
	jsonOut       bool
}

func newUpCmd(g *globals) *cobra.Command {
	f := &upFlags{}
	cmd := &cobra.Command{
		Use:   "up [flags]",
		Short: "Run Provenix in one process: embedded NATS, cache pusher and cache server",
		Long: `Run an embedded NATS server (JetStream on disk under the data directory), a
cache pusher and the binary cache's HTTP server. On first start it creates
the data directory: a builder key, a Nix cache key, a NATS token and a
default-deny policy trusting the local builder (builder id "local").

'provenix build' finds the running instance through the data directory.
With --nats-url it uses an external NATS server or cluster instead.
It stops on SIGINT/SIGTERM, letting in-flight pushes finish.

Prometheus metrics are served at /metrics and a JSON status at /status, on
the cache's listener unless --metrics-listen gives them their own.
'provenix up --status' prints the status of the instance running on the
data directory.`,
		Example: `  provenix up
  provenix up --data-dir /var/lib/provenix --listen 0.0.0.0:8080
  provenix up --nats-url nats://127.0.0.1:4222
  provenix up --status`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.status {
				return runUpStatus(cmd.Context(), g, f.jsonOut)
			}
			return runUp(cmd.Context(), g, f)
		},
	}
	f.nats.register(cmd)
	cmd.Flags().StringVar(&f.listen, "listen", up.DefaultListen, "cache HTTP server address")
	cmd.Flags().StringVar(&f.natsListen, "nats-listen", "", "embedded NATS address (default: a free port on 127.0.0.1)")
	cmd.Flags().StringVar(&f.tenant, "tenant", up.DefaultTenant, "tenant whose results this pusher publishes")
	cmd.Flags().StringVar(&f.metricsListen, "metrics-listen", "", "address for /metrics and /status (default: the cache's --listen)")
	cmd.Flags().BoolVar(&f.status, "status", false, "print the status of the running instance and exit")
	cmd.Flags().BoolVar(&f.jsonOut, "json", false, "with --status: print the status as JSON")
	return cmd
}

func runUp(ctx context.Context, g *globals, f *upFlags) error {
	s, err := up.New(up.Config{
		DataDir: g.dataDir, Listen: f.listen, NATSURL: f.nats.url, NATSListen: f.natsListen,
		Tenant: f.tenant, MetricsListen: f.metricsListen, Logger: g.logger(),
	})
	if err != nil {
		return err
	}
	if err := s.Open(ctx); err != nil {
		return err
	}
	p := s.Paths()
	fmt.Fprintf(g.stdout, "provenix up: data %s\n  NATS    %s\n  cache   %s (public key in %s)\n  metrics %s\n  policy  %s\nCtrl-C stops.\n",
		p.Dir, s.NATSURL(), s.CacheURL(), p.CachePub(), s.MetricsURL(), p.Policy())
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
	fmt.Fprintf(w, "  tenant/group  %s/%s\n", st.Tenant, st.Group)
	for _, name := range metrics.SortedKeys(st.Streams) {
		fmt.Fprintf(w, "  stream %-8s %d messages\n", name, st.Streams[name])
	}
	fmt.Fprintf(w, "  consumer lag  %d pending, %d awaiting ack\n", st.ConsumerLag, st.ConsumerAckPending)
	fmt.Fprintf(w, "  results       %d received, %d published\n", st.Pusher.Received, st.Pusher.Published)
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
