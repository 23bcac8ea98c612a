package lab

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

// bootstrap brings the hosts up as an operator would: `vigil init` on
// host1 and its daemon; then every other host joins with a one-time join
// token (init's for host2, then tokens made through the API) and starts
// its daemon. Servers join one at a time: each one's etcd member is a
// learner until it has caught up, and etcd takes one learner at a time.
func (l *Lab) bootstrap(ctx context.Context) error {
	c := l.st.Config
	h1 := HostName(1)
	// init and join read the host's name, addresses, data directory and
	// certificate lifetime from its config file, as on a real host.
	initArgs := []string{c.Bin, "init", "--config", l.configPath(h1), "--api-port", strconv.Itoa(apiPort)}
	res, err := l.net.Exec(ctx, "h1", initArgs...)
	if err != nil {
		return fmt.Errorf("vigil init on %s: %w", h1, err)
	}
	ticket := strings.TrimSpace(string(res.Stdout))
	if c.ExternalEtcd != "" {
		// The operator's etcd trusts the cluster CA that init made.
		if err := l.startExternalEtcd(ctx); err != nil {
			return err
		}
	}
	// The storage server's certificate needs the CA that init made.
	if err := l.startStorage(ctx); err != nil {
		return err
	}
	if err := l.powerOn(ctx, h1); err != nil {
		return err
	}
	if err := l.waitHosts(ctx, 90*time.Second, 1); err != nil {
		return err
	}
	cl, err := l.Client()
	if err != nil {
		return err
	}
	for k := 2; k <= c.Hosts; k++ {
		host, server := HostName(k), k <= c.Servers
		if k > 2 || !server {
			nt, err := cl.CreateToken(ctx, v1.TokenRequest{Name: "lab-join-" + host, Join: true, Server: server})
			if err != nil {
				return fmt.Errorf("join token for %s: %w", host, err)
			}
			ticket = nt.Token
		}
		if _, err := l.net.Exec(ctx, "h"+strconv.Itoa(k), c.Bin, "join", ticket, "--config", l.configPath(host)); err != nil {
			return fmt.Errorf("vigil join on %s: %w", host, err)
		}
		if err := l.powerOn(ctx, host); err != nil {
			return err
		}
		if server && c.ExternalEtcd == "" {
			if err := l.waitVoting(ctx, host, 60*time.Second); err != nil {
				return err
			}
		}
	}
	return l.waitHosts(ctx, 90*time.Second, c.Hosts)
}

// waitVoting waits until host's etcd member is a voting member.
func (l *Lab) waitVoting(ctx context.Context, host string, limit time.Duration) error {
	ec, err := l.EtcdClient(HostName(1))
	if err != nil {
		return err
	}
	defer ec.Close()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	last := "no answer"
	for {
		mctx, mcancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := ec.MemberList(mctx)
		mcancel()
		if err == nil {
			last = "not a member yet"
			for _, m := range resp.Members {
				if m.Name == host {
					if !m.IsLearner {
						return nil
					}
					last = "still a learner"
				}
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd member of %s not voting after %s: %s (logs in %s/logs)", host, limit, last, l.dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
