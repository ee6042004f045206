package action

import (
	"context"
	"fmt"
	"os"
	"strings"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/nix"
)

func (s *step) nix() *nix.Nix {
	return &nix.Nix{Options: s.in.nixOptions, Stderr: s.cfg.Stderr}
}

// targets are the installables as builder.ParseTargets classifies them
// for 'provenix build', described by the workflow the step runs in.
func (s *step) targets(ctx context.Context) ([]builder.Target, error) {
	src, wf, inv := s.workflow()
	return builder.ParseTargets(ctx, s.in.installables, builder.TargetOptions{
		Attr: s.in.attr, Args: s.in.args, ArgStrs: s.in.argstrs, Source: src, Workflow: wf, InvocationID: inv,
	})
}

// workflow is the job as the step's environment describes it: the job's
// own word, recorded with capture "job-step-key" so nobody mistakes it for
// what a runner saw.
func (s *step) workflow() (*attest.Source, *attest.Workflow, string) {
	capture := s.capture
	if capture == "" {
		capture = CaptureJobStepKey
	}
	ctx, err := s.gha.Context()
	if err != nil || ctx.Repository == "" {
		return nil, &attest.Workflow{Capture: capture}, ""
	}
	server := strings.TrimRight(ctx.ServerURL, "/")
	wf := &attest.Workflow{
		Server: server, Repository: ctx.Repository, Ref: ctx.Ref, Sha: ctx.SHA,
		Workflow: ctx.Workflow, Job: ctx.Job, Event: ctx.EventName, Actor: ctx.Actor,
		Capture: capture,
	}
	var inv string
	if ctx.RunID != 0 {
		wf.RunID = fmt.Sprint(ctx.RunID)
		inv = fmt.Sprintf("%s/%s/actions/runs/%d", server, ctx.Repository, ctx.RunID)
	}
	src := &attest.Source{Repository: server + "/" + ctx.Repository, Revision: ctx.SHA, Ref: ctx.Ref}
	return src, wf, inv
}

// tempDir is RUNNER_TEMP, where the step leaves its files.
func (s *step) tempDir() string {
	if d := s.cfg.Getenv("RUNNER_TEMP"); d != "" {
		return d
	}
	return os.TempDir()
}

// writeSecret writes a secret to a new 0600 file under RUNNER_TEMP; the
// caller removes it.
func (s *step) writeSecret(pattern string, data []byte) (string, error) {
	f, err := os.CreateTemp(s.tempDir(), pattern)
	if err != nil {
		return "", err
	}
	name := f.Name()
	if err := f.Chmod(0o600); err == nil {
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			return name, nil
		}
	} else {
		f.Close()
	}
	os.Remove(name)
	return "", err
}
