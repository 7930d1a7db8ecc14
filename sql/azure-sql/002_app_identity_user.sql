-- cache-refresher: the database user for the service's own Entra ID identity.
--
-- The service connects to Azure SQL with an access token for its app identity
-- (managed identity or app registration), never with a SQL password. This
-- script gives that identity a contained database user and exactly the rights
-- the service uses at run time: SELECT, INSERT, UPDATE and DELETE on the five
-- cache tables, through the role cache_refresher_app. No DDL, no EXECUTE, no
-- db_owner / db_ddladmin / db_datareader / db_datawriter.
--
-- Run it after 001_cache_tables.sql, connected to the *user* database (not
-- master: Azure SQL has no USE), signed in as a Microsoft Entra user, i.e. the
-- server's Entra admin or a member of its admin group. Set the sqlcmd variable
-- AppIdentityName to the identity's name in Entra ID:
--
--   - system-assigned managed identity: the name of the resource it belongs to
--     (e.g. the App Service, Container App or VM name);
--   - user-assigned managed identity: the identity resource's name;
--   - app registration (service principal): its display name.
--
--   sqlcmd -S <server>.database.windows.net -d <database> \
--       --authentication-method ActiveDirectoryDefault -b \
--       -v AppIdentityName="my-cache-refresher" \
--       -i sql/azure-sql/002_app_identity_user.sql
--
-- (go-sqlcmd; with the ODBC sqlcmd use -G instead of --authentication-method.)
-- In Azure Data Studio or SSMS, turn on SQLCMD mode and put
--   :setvar AppIdentityName my-cache-refresher
-- above this header. sqlcmd stops if the variable is not set.
--
-- If two Entra objects share the display name (Msg 33131), add
-- WITH OBJECT_ID = '<object id of the service principal>' to CREATE USER.
-- If "principal could not be resolved" (Msg 33134) when running as a service
-- principal (e.g. from CI), the logical server's identity needs Microsoft
-- Graph read rights (e.g. the Directory Readers role) to look names up.
--
-- Safe to run again: the user, the role and the membership are only created
-- when missing, and GRANT is idempotent. When the schema gains a table, add
-- its GRANT here (a test checks every cache table has exactly these rights).

IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'$(AppIdentityName)')
    CREATE USER [$(AppIdentityName)] FROM EXTERNAL PROVIDER;
GO

IF NOT EXISTS (SELECT 1 FROM sys.database_principals WHERE name = N'cache_refresher_app' AND type = 'R')
    CREATE ROLE cache_refresher_app AUTHORIZATION dbo;
GO

GRANT SELECT, INSERT, UPDATE, DELETE ON OBJECT::dbo.cache_entries TO cache_refresher_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON OBJECT::dbo.cache_leases TO cache_refresher_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON OBJECT::dbo.cache_namespaces TO cache_refresher_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON OBJECT::dbo.cache_refresh_requests TO cache_refresher_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON OBJECT::dbo.cache_refresh_runs TO cache_refresher_app;
GO

IF NOT EXISTS (
    SELECT 1
    FROM sys.database_role_members AS m
    JOIN sys.database_principals AS r ON r.principal_id = m.role_principal_id
    JOIN sys.database_principals AS u ON u.principal_id = m.member_principal_id
    WHERE r.name = N'cache_refresher_app' AND u.name = N'$(AppIdentityName)'
)
    ALTER ROLE cache_refresher_app ADD MEMBER [$(AppIdentityName)];
GO
