package volunteer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"time"

	cachepush "codeberg.org/provenix/provenix/cache-push"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	"codeberg.org/provenix/provenix/usage"
)

// FarmBuild is a farm.BuildFunc: it serves a farm request (a first build
// of a derivation whose inputs are in the cache) the way Run serves a
// rebuild request: the .drv from the set's staged closure when this
// store lacks it, the build here with substitution off for the
// derivation itself, the result signed with this volunteer's key and
// published. Its inputs are realised as this Nix usually does: give its
// Nix the Provenix cache as a substituter, with the cache's key trusted,
// so they come from there.
//
// A build that fails, or a request this volunteer cannot serve (a
// closure that does not hold what it says), is a *farm.BuildError, which
// the farm retries on another builder; trouble that may pass (the
// broker, staging) is returned as is and the request is redelivered.
func (v *Volunteer) FarmBuild(ctx context.Context, r *farm.Request) (*farm.BuildStats, error) {
	req := &queue.RebuildRequest{Version: queue.RebuildVersion, Tenant: r.Tenant, System: r.System, DrvPath: r.DrvPath,
		Outputs: slices.Sorted(maps.Values(r.Outputs)), Closure: r.Closure, Requested: r.Requested}
	action, pub, cpu, err := v.serve(ctx, req, usage.KindFarm)
	if err == nil {
		v.log().Info("farm build done", logKeyDrv, r.DrvPath, logKeyAction, action, logKeyTook, pub.Built, "cpu", cpu)
		return &farm.BuildStats{Wall: pub.Built, CPUSeconds: cpu.Seconds()}, nil
	}
	if action == ActionRetry {
		return nil, err
	}
	be := &farm.BuildError{ExitCode: -1, Log: tailLines(err.Error(), farm.MaxLogLines), Stats: farm.BuildStats{CPUSeconds: cpu.Seconds()}}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		be.ExitCode = ee.ExitCode()
	}
	if !errors.Is(err, nix.ErrBuildFailed) {
		be.Log = append([]string{fmt.Sprintf("%s: not built here: %v", r.DrvPath, firstLine(err.Error()))}, be.Log...)
	}
	return nil, be
}

// RunWithFarm serves rebuild requests (Run) and, with the same builder,
// the farm's first builds for machine m (a farm.Worker whose builds are
// FarmBuild; owner as the policy counts distinct builders, the builder
// id when empty), until ctx ends or either fails; the other is then
// stopped. Once is not allowed: a farm worker serves many requests.
func (v *Volunteer) RunWithFarm(ctx context.Context, conn *queue.Conn, m farm.Machine, owner string) error {
	if v.Once {
		return errors.New("volunteer: Once serves one rebuild request, not the farm")
	}
	if err := v.validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := v.FarmWorker(conn, m, owner)
	errs := make(chan error, 2)
	go func() { errs <- w.Run(ctx) }()
	go func() { errs <- v.Run(ctx) }()
	first := <-errs
	cancel()
	second := <-errs
	return errors.Join(first, second)
}

// FarmWorker is the farm.Worker that serves the farm's first builds for
// machine m with this volunteer's builder (FarmBuild), its standing read
// from the pushers' reputation records; owner as the policy counts
// distinct builders, the builder id when empty. RunWithFarm runs it
// beside the rebuilds; a runner daemon that volunteers runs it while it
// has no job (runner.Options.Idle). Check the volunteer with Validate
// first.
func (v *Volunteer) FarmWorker(conn *queue.Conn, m farm.Machine, owner string) *farm.Worker {
	return &farm.Worker{Conn: conn, Tenant: v.Builder.Tenant, Machine: m, Builder: v.Builder.BuilderID, Owner: owner,
		Build: v.FarmBuild, AckWait: v.AckWait, Logger: v.Logger, Standing: v.standing, Skip: v.farmVoted}
}

// Validate checks the volunteer's fields (Run and RunWithFarm do).
func (v *Volunteer) Validate() error { return v.validate() }

// farmVoted reports whether this volunteer's vote on every output of
// r is recorded already (farm.Worker.Skip): it rebuilt the derivation
// for the pushers, and building a farm replica of it would add no vote.
func (v *Volunteer) farmVoted(ctx context.Context, r *farm.Request) (bool, error) {
	return v.voted(ctx, &queue.RebuildRequest{Tenant: r.Tenant, Outputs: slices.Sorted(maps.Values(r.Outputs))})
}

// standing reads this volunteer's reputation as the pushers keep it
// (farm.Worker.Standing): quarantined, it takes no farm build, and says
// why in its log.
func (v *Volunteer) standing(ctx context.Context) (bool, string, error) {
	b, err := v.Conn.KVGet(ctx, queue.BucketBuilders, queue.BuilderKey(v.Builder.BuilderID))
	if errors.Is(err, queue.ErrNotFound) {
		return false, "", nil // never voted: in good standing
	}
	if err != nil {
		return false, "", err
	}
	var r cachepush.Reputation
	if err := json.Unmarshal(b, &r); err != nil {
		return false, "", fmt.Errorf("reputation of %s: %w", v.Builder.BuilderID, err)
	}
	if !r.Quarantined {
		return false, "", nil
	}
	why := fmt.Sprintf("your builds disagreed with others' %d times (%d agreed), %d of them recently in the minority", r.Disagreements, r.Agreements, len(r.Minority))
	if r.Malformed > 0 {
		why += fmt.Sprintf("; %d malformed statements signed", r.Malformed)
	}
	if r.QuarantinedAt != nil {
		why += "; quarantined since " + r.QuarantinedAt.UTC().Format(time.RFC3339)
	}
	return true, why, nil
}

// tailLines is the last n non-empty lines of s.
func tailLines(s string, n int) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimRight(l, " \t\r"); l != "" {
			out = append(out, l)
		}
	}
	return out[max(0, len(out)-n):]
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
