-- The schema clusterchat 0a5d0ec (the last release before schema migrations) made
-- with metadata.create_all on SQLite (sqlite3 .schema of a new database), and a
-- few rows as that release wrote them. Password of every user: secret.
CREATE TABLE users (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	name_key VARCHAR(255) NOT NULL, 
	password_hash VARCHAR(255) NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name), 
	UNIQUE (name_key)
);
CREATE TABLE chat_groups (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	name_key VARCHAR(255) NOT NULL, 
	description VARCHAR(256) NOT NULL, 
	invite_only BOOLEAN DEFAULT 0 NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name), 
	UNIQUE (name_key)
);
CREATE TABLE friends (
	user_id INTEGER NOT NULL, 
	friend_id INTEGER NOT NULL, 
	PRIMARY KEY (user_id, friend_id), 
	FOREIGN KEY(user_id) REFERENCES users (id), 
	FOREIGN KEY(friend_id) REFERENCES users (id)
);
CREATE TABLE friend_requests (
	from_id INTEGER NOT NULL, 
	to_id INTEGER NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (from_id, to_id), 
	FOREIGN KEY(from_id) REFERENCES users (id), 
	FOREIGN KEY(to_id) REFERENCES users (id)
);
CREATE INDEX ix_friend_requests_to ON friend_requests (to_id);
CREATE TABLE group_invites (
	group_id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	PRIMARY KEY (group_id, user_id), 
	FOREIGN KEY(group_id) REFERENCES chat_groups (id), 
	FOREIGN KEY(user_id) REFERENCES users (id)
);
CREATE TABLE group_members (
	group_id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	PRIMARY KEY (group_id, user_id), 
	FOREIGN KEY(group_id) REFERENCES chat_groups (id), 
	FOREIGN KEY(user_id) REFERENCES users (id)
);
CREATE INDEX ix_group_members_user ON group_members (user_id);
CREATE TABLE messages (
	conversation VARCHAR(32) NOT NULL, 
	seq BIGINT NOT NULL, 
	mid VARCHAR(64) NOT NULL, 
	sender_id INTEGER NOT NULL, 
	cid VARCHAR(64), 
	time VARCHAR(19) NOT NULL, 
	body BLOB NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (conversation, seq), 
	FOREIGN KEY(sender_id) REFERENCES users (id)
)
 WITHOUT ROWID

;
CREATE UNIQUE INDEX uq_messages_sender_cid ON messages (sender_id, cid) WHERE cid IS NOT NULL;
CREATE TABLE cursors (
	user_id INTEGER NOT NULL, 
	device VARCHAR(64) NOT NULL, 
	pos BIGINT NOT NULL, 
	PRIMARY KEY (user_id, device), 
	FOREIGN KEY(user_id) REFERENCES users (id)
);
CREATE TABLE inbox (
	user_id INTEGER NOT NULL, 
	pos BIGINT NOT NULL, 
	conversation VARCHAR(32) NOT NULL, 
	seq BIGINT NOT NULL, 
	PRIMARY KEY (user_id, pos), 
	CONSTRAINT fk_inbox_message FOREIGN KEY(conversation, seq) REFERENCES messages (conversation, seq), 
	FOREIGN KEY(user_id) REFERENCES users (id)
)
 WITHOUT ROWID

;
INSERT INTO users (id, name, name_key, password_hash) VALUES
  (1, 'alice', 'alice', '$argon2id$v=19$m=1024,t=1,p=4$TTfNuenXHiqTnXeTlShzCg$fpF3NjTQa9NvYPwe8jSLYX0GgGZFrMBrAZT17t+YLCI'),
  (2, 'bob', 'bob', '$argon2id$v=19$m=1024,t=1,p=4$TTfNuenXHiqTnXeTlShzCg$fpF3NjTQa9NvYPwe8jSLYX0GgGZFrMBrAZT17t+YLCI');
INSERT INTO friends VALUES (1, 2), (2, 1);
INSERT INTO chat_groups (id, name, name_key, description, invite_only) VALUES (1, 'tea', 'tea', '', 0);
INSERT INTO group_members VALUES (1, 1, 'creator'), (1, 2, 'normal');
INSERT INTO messages (conversation, seq, mid, sender_id, cid, time, body) VALUES
  ('u:1:2', 1, 'm-1', 1, NULL, '2026-12-01 10:00:00',
   CAST('{"id":1,"mid":"m-1","msg":"read already","msgid":6,"name":"alice","time":"2026-12-01 10:00:00","toid":2}' AS BLOB)),
  ('u:1:2', 2, 'm-2', 1, 'c-2', '2026-12-01 10:00:05',
   CAST('{"id":1,"mid":"m-2","msg":"while you were away","msgid":6,"name":"alice","time":"2026-12-01 10:00:05","toid":2}' AS BLOB));
INSERT INTO inbox VALUES (2, 1, 'u:1:2', 1), (2, 2, 'u:1:2', 2);
INSERT INTO cursors VALUES (2, '', 1);
