package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
		Long: `Poll the forge named in the .runner file for jobs and run them natively on
this host, up to runner.capacity at once. Each job runs in its own process
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
				return err
			}
			defer rs.close()
			rs.log.Info("runner started", "name", rs.file.Name, "forge", rs.file.Address, "labels", rs.labels, "builder", rs.builderID)
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
	runner    *runner.Runner
	file      *rpc.RunnerFile
	labels    []string
	builderID string
	log       *slog.Logger
	conn      *queue.Conn
}

func (rs *runnerSetup) close() {
	if rs.runner != nil {
		if err := rs.runner.Close(); err != nil {
			rs.log.Warn("removing the runner's cgroup", "err", err)
		}
	}
	if rs.conn != nil {
		rs.conn.Close()
	}
}

// setupRunner loads the config, the .runner file, the key and NATS, and
// builds the runner.
func setupRunner(ctx context.Context, g *globals, cfgPath string) (*runnerSetup, error) {
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
	rf, err := rpc.LoadRunnerFile(cfg.Runner.File)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, usageError("this runner is not registered (%s not found): run 'provenix runner register --instance URL --token TOKEN' first", cfg.Runner.File)
		}
		return nil, usageError("%v", err)
	}
	for _, w := range rf.Warnings {
		log.Warn(w)
	}
	labels, err := cfg.JobLabels(rf.Labels)
	if err != nil {
		return nil, usageError("%v", err)
	}
	client, err := rpc.New(rf.Address,
		rpc.WithCredentials(rf.UUID, rf.Token),
		rpc.WithInsecureSkipVerifyUnsafe(cfg.Runner.Insecure),
		rpc.WithVersion(version),
		rpc.WithLogger(log))
	if err != nil {
		return nil, usageError("%v", err)
	}

	builderID := cfg.BuilderID(rf.Name)
	rs := &runnerSetup{file: rf, labels: labels, builderID: builderID, log: log}
	keyPath := cfg.Provenix.Key
	if keyPath == "" {
		keyPath = g.paths().BuilderKey()
	}
	signer, err := attest.LoadSigner(keyPath)
	if err != nil {
		return nil, usageError("%v\nThe runner signs what its jobs build: create a key with 'provenix key generate --builder %s' and trust its .pub for builder id %q in the cache policy", err, keyPath, builderID)
	}
	nf := natsFlags{url: cfg.Provenix.NATSURL, creds: cfg.Provenix.NATSCreds, token: cfg.Provenix.NATSTokenFile,
		nkey: cfg.Provenix.NATSNKey, ca: cfg.Provenix.NATSCA, cert: cfg.Provenix.NATSCert, key: cfg.Provenix.NATSKey}
	conn, err := nf.connect(ctx, g, "provenix-runner-"+rf.Name)
	if err != nil {
		return nil, err
	}
	rs.conn = conn
	rec, err := usage.NewPublisher(conn)
	if err != nil {
		rs.close()
		return nil, err
	}
	b := &builder.Builder{
		Nix: &nix.Nix{}, Queue: conn, Signer: signer, BuilderID: builderID,
		Tenant: cfg.Provenix.Tenant, Version: version, Logger: log,
		StageClosures: true, // so volunteers can rebuild what jobs built
	}
	workdir, err := cfg.WorkdirParent(g.dataDir)
	if err != nil {
		rs.close()
		return nil, usageError("%v", err)
	}
	var idle func(context.Context) error
	if cfg.Provenix.Volunteer {
		if idle, err = idleVolunteer(ctx, conn, b, rec, cfg.Provenix.Owner, cfg.Provenix.NixOptions, cfg.Provenix.FarmAckWait, log); err != nil {
			rs.close()
			return nil, err
		}
	}
	r, err := runner.New(client, b, runner.Options{
		Labels: labels, Capacity: cfg.Runner.Capacity,
		Timeout: cfg.Runner.Timeout, ShutdownTimeout: cfg.Runner.ShutdownTimeout,
		FetchInterval: cfg.Runner.FetchInterval, FetchTimeout: cfg.Runner.FetchTimeout,
		ReportInterval: cfg.Runner.ReportInterval, Envs: cfg.Runner.Envs,
		WorkdirParent: workdir, JobUser: cfg.Provenix.JobUser, JobUsers: cfg.Provenix.JobUsers,
		DisableCgroup: cfg.Provenix.NoCgroup, DisablePrivateTmp: cfg.Provenix.NoPrivateTmp, Version: version, Logger: log,
		Idle: idle, Usage: rec,
	})
	if err != nil {
		rs.close()
		return nil, usageError("%v", err)
	}
	rs.runner = r
	return rs, nil
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
