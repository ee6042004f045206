package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"github.com/spf13/cobra"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/runner"
	"codeberg.org/provenix/provenix/runner/config"
	"codeberg.org/provenix/provenix/runner/job"
	"codeberg.org/provenix/provenix/runner/rpc"
	"codeberg.org/provenix/provenix/usage"
	"codeberg.org/provenix/provenix/volunteer"
)

// runnerDaemonCmds are the runner's commands that run jobs.
func runnerDaemonCmds(g *globals) []*cobra.Command {
	var cfgPath string
	daemon := &cobra.Command{
		Use:   "daemon",
		Short: "Poll the forge and run jobs until stopped",
		Long: `Poll the forge named in the .runner file, or every forge of the config's
server.connections, for jobs and run them natively on this host, up to
runner.capacity at once in all; the forges are polled in turn, so a busy
one cannot starve another, and each job reports to the forge it came from.
A connection with a provenix block of its own runs its jobs for its own
tenant: its key, NATS account, builder id and job users. Each job runs in its own process
as the job user (provenix.job_user, when the runner is root), so steps can
read neither the signing key nor the .runner token. With provenix.job_users
every running job gets a user of its own from that pool, and on Linux a
cgroup of its own: whatever a job leaves running is killed when it ends. Every derivation a job
builds is attested with the runner's key and published to NATS.

With provenix.volunteer the runner builds for the farm while it runs no job
(as 'provenix volunteer --farm' does, with the runner's key and builder id);
a job that arrives stops the farm build first, which goes back to the farm.

SIGINT/SIGTERM stop polling; running jobs get runner.shutdown_timeout to
finish before they are cancelled and reported as cancelled.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := setupRunner(cmd.Context(), g, cfgPath)
			if err != nil {
				return stoppedStarting(cmd.Context(), g, err)
			}
			defer rs.close()
			rs.log.Info("runner started", "connections", len(rs.conns))
			return rs.runner.Run(cmd.Context())
		},
	}
	daemon.Flags().StringVarP(&cfgPath, "config", "c", "", "config file (see 'provenix runner generate-config'); default: built-in defaults")

	var oneCfg string
	oneJob := &cobra.Command{
		Use:   "one-job",
		Short: "Wait for one job, run it and exit",
		Long: `Poll until the forge hands out one job, run it like the daemon does, report
it and exit: 0 when the job succeeded, 1 when it failed or was cancelled.
Handy for ephemeral runners and for trying a setup.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := setupRunner(cmd.Context(), g, oneCfg)
			if err != nil {
				return err
			}
			defer rs.close()
			res, err := rs.runner.RunOne(cmd.Context())
			if err != nil {
				return &exitError{code: exitUsageErr, err: err}
			}
			fmt.Fprintf(g.stdout, "job finished: %s\n", res)
			if res != runnerv1.Result_RESULT_SUCCESS {
				return &exitError{code: exitFailed, err: fmt.Errorf("job %s", res)}
			}
			return nil
		},
	}
	oneJob.Flags().StringVarP(&oneCfg, "config", "c", "", "config file; default: built-in defaults")

	execJob := &cobra.Command{
		Use:    "exec-job",
		Short:  "Run one job from a spec on stdin (internal: the daemon starts it as the job user)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return job.Serve(cmd.Context(), g.stdin, g.stdout)
		},
	}
	return []*cobra.Command{daemon, oneJob, execJob}
}

type runnerSetup struct {
	runner *runner.Runner
	conns  []config.ResolvedConnection
	log    *slog.Logger
	nats   []*queue.Conn
}

func (rs *runnerSetup) close() {
	if rs.runner != nil {
		if err := rs.runner.Close(); err != nil {
			rs.log.Warn("removing the runner's cgroup", "err", err)
		}
	}
	for _, c := range rs.nats {
		c.Close()
	}
}

// tenantBuilder is the builder of the connections with one set of
// provenix settings (one tenant's key and NATS account): connections
// sharing them share it.
type tenantBuilder struct {
	settings config.Provenix
	builder  *builder.Builder
	conn     *queue.Conn
	usage    usage.Recorder // on the tenant's own NATS account
}

// setupRunner loads the config, the forge connections (server.connections
// or the .runner file), each connection's key and NATS, and builds the
// runner.
func setupRunner(ctx context.Context, g *globals, cfgPath string) (_ *runnerSetup, err error) {
	cfg := config.Default()
	if cfgPath != "" {
		c, err := config.Load(cfgPath)
		if err != nil {
			return nil, usageError("%v", err)
		}
		cfg = c
	}
	lvl, err := config.ParseLevel(cfg.Log.Level)
	if err != nil {
		return nil, usageError("%v", err)
	}
	if g.logLevel != "info" { // --log-level wins over the file
		_ = lvl.UnmarshalText([]byte(g.logLevel))
	}
	log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: lvl}))
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	if len(cfg.Server.Connections) == 0 {
		rf, err := rpc.LoadRunnerFile(cfg.Runner.File)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, usageError("this runner is not registered (%s not found, and the config has no server.connections): run 'provenix runner register --instance URL --token TOKEN' first", cfg.Runner.File)
			}
			return nil, usageError("%v", err)
		}
		for _, w := range rf.Warnings {
			log.Warn(w)
		}
	}
	resolved, err := rpc.Connections(cfg)
	if err != nil {
		return nil, usageError("%v", err)
	}
	if err := cfg.CheckTenantSecrets(); err != nil {
		return nil, usageError("%v", err)
	}
	rs := &runnerSetup{conns: resolved, log: log}
	defer func() { // what is open so far, when a later step fails
		if err != nil {
			rs.close()
		}
	}()
	var (
		builders []*tenantBuilder
		conns    []runner.Connection
		idles    []func(context.Context) error
	)
	for _, rc := range resolved {
		p := cfg.ProvenixFor(rc.Name)
		labels, err := config.LabelNames(rc.Labels)
		if err != nil {
			return nil, usageError("connection %s: %v", rc.Name, err)
		}
		client, err := rpc.New(rc.URL,
			rpc.WithCredentials(rc.UUID, rc.Token),
			rpc.WithInsecureSkipVerifyUnsafe(cfg.Runner.Insecure),
			rpc.WithVersion(version),
			rpc.WithLogger(log.With("connection", rc.Name)))
		if err != nil {
			return nil, usageError("connection %s: %v", rc.Name, err)
		}
		tb, err := rs.builderFor(ctx, g, &builders, p, rc.Name, log)
		if err != nil {
			return nil, err
		}
		if p.Volunteer && tb.settings.Volunteer {
			idle, err := idleVolunteer(ctx, tb.conn, tb.builder, tb.usage, p.Owner, p.NixOptions, p.FarmAckWait, log.With("connection", rc.Name))
			if err != nil {
				return nil, err
			}
			idles = append(idles, idle)
			tb.settings.Volunteer = false // once per builder
		}
		workdir, err := cfg.ConnectionWorkdir(g.dataDir, rc.Name)
		if err != nil {
			return nil, usageError("%v", err)
		}
		conns = append(conns, runner.Connection{
			Name: rc.Name, Forge: client, Labels: labels, FetchInterval: rc.FetchInterval, Builder: tb.builder,
			WorkdirParent: workdir, JobUser: p.JobUser, JobUsers: p.JobUsers, Usage: tb.usage,
		})
		log.Info("forge connection", "connection", rc.Name, "forge", rc.URL, "labels", labels, "tenant", p.Tenant, "builder", tb.builder.BuilderID, "workdir_parent", workdir)
	}
	r, err := runner.NewConnections(conns, runner.Options{
		Capacity: cfg.Runner.Capacity,
		Timeout:  cfg.Runner.Timeout, ShutdownTimeout: cfg.Runner.ShutdownTimeout,
		FetchInterval: cfg.Runner.FetchInterval, FetchTimeout: cfg.Runner.FetchTimeout,
		ReportInterval: cfg.Runner.ReportInterval, Envs: cfg.Runner.Envs,
		DisableCgroup: cfg.Provenix.NoCgroup, DisablePrivateTmp: cfg.Provenix.NoPrivateTmp, Version: version, Logger: log,
		JobWindowsDir: cmp.Or(cfg.Provenix.JobWindowsDir, os.Getenv(envJobWindowsDir)),
		Idle:          allIdle(idles),
	})
	if err != nil {
		return nil, usageError("%v", err)
	}
	rs.runner = r
	return rs, nil
}

// builderFor returns the builder for settings p, made for connection name
// (its key, its NATS connection) unless an earlier connection has the
// same settings.
func (rs *runnerSetup) builderFor(ctx context.Context, g *globals, builders *[]*tenantBuilder, p config.Provenix, name string, log *slog.Logger) (*tenantBuilder, error) {
	for _, tb := range *builders {
		s := tb.settings
		s.Volunteer = p.Volunteer
		if reflect.DeepEqual(s, p) {
			return tb, nil
		}
	}
	builderID := p.BuilderIDFor(name)
	keyPath := p.Key
	if keyPath == "" {
		keyPath = g.paths().BuilderKey()
	}
	signer, err := attest.LoadSigner(keyPath)
	if err != nil {
		return nil, usageError("connection %s: %v\nThe runner signs what its jobs build: create a key with 'provenix key generate --builder %s' and trust its .pub for builder id %q in the cache policy", name, err, keyPath, builderID)
	}
	nf := natsFlags{url: p.NATSURL, creds: p.NATSCreds, token: p.NATSTokenFile,
		nkey: p.NATSNKey, ca: p.NATSCA, cert: p.NATSCert, key: p.NATSKey}
	conn, err := nf.connect(ctx, g, "provenix-runner-"+name)
	if err != nil {
		return nil, err
	}
	rs.nats = append(rs.nats, conn)
	rec, err := usage.NewPublisher(conn)
	if err != nil {
		return nil, fmt.Errorf("connection %s: %w", name, err)
	}
	tb := &tenantBuilder{settings: p, conn: conn, usage: rec, builder: &builder.Builder{
		Nix: &nix.Nix{}, Queue: conn, Signer: signer, BuilderID: builderID,
		Tenant: p.Tenant, Version: version, Logger: log.With("tenant", p.Tenant),
		StageClosures: true, // so volunteers can rebuild what jobs built
	}}
	*builders = append(*builders, tb)
	return tb, nil
}

// allIdle runs every tenant's volunteer at once while the runner has no
// job; nil when none volunteers.
func allIdle(idles []func(context.Context) error) func(context.Context) error {
	switch len(idles) {
	case 0:
		return nil
	case 1:
		return idles[0]
	}
	// One that stops by itself stops the others: the runner starts them
	// all again later (idleRetry).
	return func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		errs := make(chan error, len(idles))
		for _, idle := range idles {
			go func() { errs <- idle(ctx); cancel() }()
		}
		var all []error
		for range idles {
			all = append(all, <-errs)
		}
		return errors.Join(all...)
	}
}

// idleVolunteer is the farm worker a runner runs while it has no job
// (provenix.volunteer): the farm's builds for this host's Nix machine,
// with the runner's key and builder id, and Nix with nixOptions
// (provenix.nix_options; the jobs' Nix has none).
func idleVolunteer(ctx context.Context, conn *queue.Conn, jb *builder.Builder, rec usage.Recorder, owner string, nixOptions map[string]string, ackWait time.Duration, log *slog.Logger) (func(context.Context) error, error) {
	b := &builder.Builder{
		Nix: &nix.Nix{Options: nixOptions}, Queue: jb.Queue, Signer: jb.Signer, BuilderID: jb.BuilderID,
		Tenant: jb.Tenant, Version: jb.Version, Logger: jb.Logger, StageClosures: jb.StageClosures,
	}
	cfg, err := b.Nix.Config(ctx)
	if err != nil {
		return nil, fmt.Errorf("provenix.volunteer: %w", err)
	}
	m := farm.MachineOf(cfg)
	v := &volunteer.Volunteer{Conn: conn, Builder: b, Systems: []string{m.System}, Logger: log, AckWait: ackWait, Usage: rec}
	if err := v.Validate(); err != nil {
		return nil, usageError("provenix.volunteer: %v", err)
	}
	log.Info("the runner volunteers for the farm while it has no job", "system", m.System, "extra_platforms", m.ExtraPlatforms, "features", m.Features)
	return v.FarmWorker(conn, m, owner).Run, nil
}

// envJobWindowsDir overrides the default of provenix.job_windows_dir:
// the runners of one test binary share theirs, apart from other tests'.
const envJobWindowsDir = "PROVENIX_JOB_WINDOWS_DIR"
