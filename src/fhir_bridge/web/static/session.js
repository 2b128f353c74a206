// Who is signed in, as GET /me answered: the `coordinator` every task change is sent as.

export const session = {
  me: null, // {subject, roles, queues, auth_enabled}
};

/** The id to send as `coordinator`: the credential's subject, or the demo user (auth off). */
export function coordinator() {
  return session.me ? session.me.subject : null;
}

/** The queues the user may work, or null for every queue. */
export function myQueues() {
  return session.me ? session.me.queues : null;
}
