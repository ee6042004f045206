package rpc

import (
	"context"
	"errors"
	"fmt"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"

	"codeberg.org/provenix/provenix/runner/config"
)

// RegisterOptions describe a runner to register.
type RegisterOptions struct {
	Instance string // forge URL
	Token    string // registration token from the forge's runner settings
	Name     string
	// Labels as configured ("nix", "nix:host"); only their names are sent,
	// the labels themselves are kept in the RunnerFile.
	Labels []string
	// Ephemeral asks for a runner that takes one task and is then removed
	// by the forge.
	Ephemeral bool
	// ClientOptions configure the client (TLS, version, logger, retries).
	// Credentials are not used.
	ClientOptions []Option
}

// Register registers a runner as forgejo-runner's `register` does: Ping
// (with the runner name as data) to check that the instance answers, then
// Register with the label names; it returns the registration for Save.
func Register(ctx context.Context, o RegisterOptions) (*RunnerFile, error) {
	switch {
	case o.Token == "":
		return nil, errors.New("register: no registration token")
	case o.Name == "":
		return nil, errors.New("register: no runner name")
	}
	labels, err := config.ParseLabels(o.Labels)
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	names := make([]string, len(labels))
	kept := make([]string, len(labels))
	for i, l := range labels {
		names[i], kept[i] = l.Name, l.String()
	}
	c, err := New(o.Instance, o.ClientOptions...)
	if err != nil {
		return nil, err
	}
	if _, err := c.Ping(ctx, o.Name); err != nil {
		return nil, fmt.Errorf("register: %s does not answer: %w", c.Instance(), err)
	}
	res, err := c.Register(ctx, &runnerv1.RegisterRequest{
		Name:    o.Name,
		Token:   o.Token,
		Version: c.Version(),
		// AgentLabels is deprecated; forgejo-runner still fills it for
		// Gitea before 1.20, and so does this.
		AgentLabels: names,
		Labels:      names,
		Ephemeral:   o.Ephemeral,
	})
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	r := res.GetRunner()
	if r.GetUuid() == "" || r.GetToken() == "" {
		return nil, fmt.Errorf("register: %w: the forge answered without a runner uuid or token", ErrRejected)
	}
	name := r.GetName()
	if name == "" {
		name = o.Name
	}
	return &RunnerFile{
		Warning: RunnerFileWarning,
		ID:      r.GetId(),
		UUID:    r.GetUuid(),
		Name:    name,
		Token:   r.GetToken(),
		Address: o.Instance,
		Labels:  kept,
	}, nil
}

// ErrUnknownSecret: the forge does not know the registration a RunnerFile
// holds (CheckRegistration); it must be registered there first.
var ErrUnknownSecret = errors.New("the forge does not know this secret: register it there first with 'forgejo forgejo-cli actions register --secret ...'")

// CheckRegistration checks, before a RunnerFile made offline
// (CreateRunnerFile) is saved, that its forge answers (Ping) and accepts
// its credentials (Declare with its label names). It returns the runner
// as the forge declared it, or nil when the forge is too old to say
// (Declare is unimplemented before Forgejo 1.21): then only Ping was
// checked. A forge that refuses the credentials gives ErrUnknownSecret.
// opts configure the client; the file's credentials are added.
func CheckRegistration(ctx context.Context, rf *RunnerFile, version string, opts ...Option) (*runnerv1.Runner, error) {
	c, err := New(rf.Address, append(opts, WithCredentials(rf.UUID, rf.Token), WithVersion(version))...)
	if err != nil {
		return nil, err
	}
	if _, err := c.Ping(ctx, rf.Name); err != nil {
		return nil, fmt.Errorf("%s does not answer: %w", rf.Address, err)
	}
	names, err := config.LabelNames(rf.Labels)
	if err != nil {
		return nil, err
	}
	res, err := c.Declare(ctx, &runnerv1.DeclareRequest{Version: version, Labels: names})
	switch {
	case errors.Is(err, ErrUnimplemented):
		return nil, nil
	case errors.Is(err, ErrUnauthenticated):
		return nil, fmt.Errorf("%w: %w", ErrUnknownSecret, err)
	case err != nil:
		return nil, err
	}
	return res.GetRunner(), nil
}
